"""Running instances in this process: ``run``, ``retry``, ``cancel``, ``recover``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from stepline.cli.common import Db, InstanceId, Params, err, errors, fail, open_service, out
from stepline.cli.definitions import add_import_path, is_file

if TYPE_CHECKING:
    from stepline.cli.progress import Progress
    from stepline.engine.orchestrator import StepEvent
    from stepline.service import Stepline


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    from stepline.core.params import parse_params

    try:
        return parse_params(items or [])
    except ValueError as exc:
        fail(str(exc), 2)


def _refuse_if_paused(service: Stepline, name: str, path: Path) -> None:
    """A paused batch takes no instance: refused before its file is applied, so that the
    command that fails changes nothing (``stepline apply`` updates a paused batch)."""
    from stepline.errors import NotFound, Paused

    try:
        paused = service.store.definition(name).paused
    except NotFound:
        return
    if paused:
        raise Paused(
            f"batch {name!r} is paused: it takes no new instance until resumed; "
            f"{path} was not applied",
            hint=f"`stepline resume {name}` first",
        )


def _drive(service: Stepline, instance_id: int, progress: Progress) -> None:
    from stepline.core.states import InstanceStatus

    try:
        final = service.run_instance(instance_id, on_wait=lambda text: err.print(escape(text)))
    except KeyboardInterrupt:
        progress.close()
        err.print(
            f"interrupted: instance {instance_id} is left for recovery; "
            "`stepline recover` resumes it"
        )
        raise typer.Exit(130) from None
    progress.close()
    if final.status is InstanceStatus.CANCELLED and (final.error or "").startswith("skipped:"):
        fail(f"instance {final.id} of {final.batch} was not run: {final.error}", 2)
    colour = "green" if final.status is InstanceStatus.SUCCEEDED else "red"
    out.print(
        f"instance {final.id} of {final.batch} [{colour}]{final.status.value}[/] "
        f"in {progress.elapsed():.2f}s ({progress.summary()})"
    )
    if final.status is not InstanceStatus.SUCCEEDED:
        out.print(f"inspect it with `stepline show {final.id}`")
        raise typer.Exit(1)


class _Forward:
    """Lets the orchestrator exist before the progress display that it reports to."""

    target: Progress | None = None

    def __call__(self, event: StepEvent) -> None:
        if self.target is not None:
            self.target(event)


def run(
    batch: Annotated[
        str,
        typer.Argument(help="A stored batch name, a definition file, or package.module:attribute"),
    ],
    param: Params = None,
    db: Db = None,
) -> None:
    """Run one instance to the end in this process, with live progress."""
    from stepline.cli.progress import Progress
    from stepline.core.targets import is_python_target

    params = _parse_params(param)
    forward = _Forward()
    with errors(), open_service(db, listener=forward) as service:
        if is_python_target(batch):
            stored_list = service.apply_target(batch)
            if len(stored_list) != 1:
                names = ", ".join(s.name for s in stored_list)
                fail(f"{batch} holds {len(stored_list)} batches ({names}); run one by name", 2)
            name = stored_list[0].name
        elif is_file(batch):
            path = Path(batch)
            if path.is_dir():
                fail(f"{batch} is a directory; `stepline run` takes one definition file", 2)
            add_import_path(path)
            (definition,) = service.check_path(path)  # a file holds one definition
            _refuse_if_paused(service, definition.name, path)
            name = service.store.apply(definition).name
        else:
            name = batch
        instance, _ = service.trigger(name, params, "cli", owned=True)
        definition = service.store.definition_for(instance)
        out.print(
            f"instance {instance.id} of {name} started (version {instance.definition_version})"
        )
        forward.target = Progress(out, [s.key for s in definition.steps])
        _drive(service, instance.id, forward.target)


def retry(instance_id: InstanceId, db: Db = None) -> None:
    """Re-run what did not succeed in a failed or cancelled instance, reusing stored results."""
    from stepline.cli.progress import Progress

    forward = _Forward()
    with errors(), open_service(db, listener=forward) as service:
        instance = service.retry(instance_id)
        results = service.store.step_results(instance_id)
        out.print(f"instance {instance_id} of {instance.batch} retrying")
        progress = Progress(out, [r.step_key for r in results if r.map_index < 0])
        for r in results:
            if r.map_index < 0:
                progress.status[r.step_key] = r.status
        forward.target = progress
        _drive(service, instance_id, progress)


def cancel(instance_id: InstanceId, db: Db = None) -> None:
    """Stop an instance: no new steps start, pending steps end cancelled."""
    from stepline.core.states import InstanceStatus

    with errors(), open_service(db) as service:
        instance = service.cancel(instance_id)
        state = (
            "cancelled"
            if instance.status is InstanceStatus.CANCELLED
            else "cancellation requested; its owner stops it within a second"
        )
        out.print(f"instance {instance_id}: {state}")


def recover(db: Db = None) -> None:
    """Resume every instance whose owner process died, and run them to the end."""
    with errors(), open_service(db) as service:
        recovered = service.recover()
        if not recovered:
            out.print("nothing to recover")
        for instance in recovered:
            out.print(f"instance {instance.id} of {instance.batch}: {instance.status.value}")
