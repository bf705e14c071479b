"""The ``recorder`` command: a thin layer over the library API.

Layout (no module here imports another command module, so there is no cycle):

* :mod:`~recorder.cli.app`: the ``recorder`` group, its global options and
  the :class:`~recorder.settings.Settings` every subcommand receives;
* :mod:`~recorder.cli.errors`: one ``error:`` line per failure (plus its
  ``caused by:`` chain), exit status 1 for runtime failures and 2 for usage
  mistakes, passwords masked;
* :mod:`~recorder.cli.storage` and :mod:`~recorder.cli.options`: helpers the
  subcommands share (opening the database; time, actor and match options);
* one module per command family: :mod:`~recorder.cli.db`,
  :mod:`~recorder.cli.envelopes`, :mod:`~recorder.cli.retention`,
  :mod:`~recorder.cli.sealing`, :mod:`~recorder.cli.erase`, :mod:`~recorder.cli.reports`,
  :mod:`~recorder.cli.slack`, :mod:`~recorder.cli.archive`.

How to add a subcommand (keep the edit small and additive):

* write one function per subcommand, decorated ``@click.command("name")``
  (or ``@click.group("name")`` for a family such as ``recorder retention ...``),
  in the module of its family or a new one;
* take the settings with ``@click.pass_obj`` (a :class:`~recorder.settings.Settings`)
  and open storage with :func:`~recorder.cli.storage.open_engine`;
* call the library and print; raise a :class:`~recorder.errors.RecorderError`
  for anything the user must fix (never catch it to print it yourself);
* register it below with ``main.add_command``.

Every option also reads a ``RECORDER_<COMMAND>_<OPTION>`` environment variable
(click's ``auto_envvar_prefix``).
"""

from __future__ import annotations

from recorder.cli import (
    archive,
    db,
    envelopes,
    erase,
    replay,
    reports,
    retention,
    sealing,
    slack,
    spool,
)
from recorder.cli.app import main
from recorder.cli.errors import error_lines, redact

main.add_command(db.db_group)
main.add_command(envelopes.import_command)
main.add_command(envelopes.query_command)
main.add_command(retention.retention_group)
main.add_command(retention.hold_group)
main.add_command(retention.prune_command)
main.add_command(sealing.seal_command)
main.add_command(sealing.verify_command)
main.add_command(erase.erase_command)
main.add_command(reports.stats_command)
main.add_command(reports.report_command)
main.add_command(slack.listen_command)
main.add_command(slack.demo_command)
main.add_command(archive.archive_group)
main.add_command(replay.replay_command)
main.add_command(spool.spool_group)

__all__ = ["error_lines", "main", "redact"]
