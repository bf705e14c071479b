"""Realistic Socket Mode envelopes for tests: events, slash commands, interactions.

:class:`EnvelopeFactory` builds envelopes shaped the way Slack sends them over
Socket Mode, each with a fresh ``envelope_id`` (a UUID, as Slack uses) and,
for ``events_api``, a fresh ``payload.event_id``. Builders return plain dicts,
so a test can change any field before sending.

Retries are built with :meth:`EnvelopeFactory.retry_of`: a new envelope id,
the same payload (so the same ``event_id``), ``retry_attempt`` one higher and
``retry_reason`` set, which is what Slack does when an envelope was not acked.

Pure functions and counters, no I/O; safe to call from several threads.
"""

from __future__ import annotations

import copy
import itertools
import random
import string
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from recorder.errors import RecorderError

__all__ = ["EnvelopeFactory", "SimulatorError"]

_ID_ALPHABET = string.ascii_uppercase + string.digits


class SimulatorError(RecorderError):
    """The simulator was used wrongly: not started, an unknown connection or envelope, bad input."""


class EnvelopeFactory:
    """Builds Socket Mode envelopes for one simulated workspace and app.

    Parameters
    ----------
    team_id, api_app_id, enterprise_id
        Where the envelopes come from.
    channel_id, user_id, bot_user_id
        The defaults for the conversation, the acting user, and the bot that
        is mentioned (``app_mention``) and authorised.
    seed
        Seed for the ids, so a stream can be replayed exactly; ``None`` for
        random ids.
    """

    def __init__(
        self,
        *,
        team_id: str = "T0SIMTEAM",
        api_app_id: str = "A0SIMAPP",
        enterprise_id: str | None = None,
        channel_id: str = "C0SIMCHAN",
        user_id: str = "U0SIMUSER",
        bot_user_id: str = "U0SIMBOT",
        seed: int | None = None,
    ) -> None:
        self.team_id = team_id
        self.api_app_id = api_app_id
        self.enterprise_id = enterprise_id
        self.channel_id = channel_id
        self.user_id = user_id
        self.bot_user_id = bot_user_id
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._sequence = itertools.count(1)
        self._seeded = seed is not None
        self._epoch = 1_700_000_000 if self._seeded else int(time.time())

    # ids -----------------------------------------------------------------

    def envelope_id(self) -> str:
        """A fresh envelope id (a UUID4 string, as Slack sends)."""
        with self._lock:
            bits = self._random.getrandbits(128)
        return str(uuid.UUID(int=bits, version=4))

    def event_id(self) -> str:
        """A fresh ``Ev...`` event id."""
        with self._lock:
            tail = "".join(self._random.choices(_ID_ALPHABET, k=10))
        return "Ev" + tail

    def _trigger_id(self) -> str:
        with self._lock:
            return f"{self._random.randrange(10**12)}.{self._random.randrange(10**12)}.{self._random.getrandbits(64):016x}"

    def _ts(self) -> str:
        # Unique, increasing message timestamps in Slack's "seconds.micro" form.
        n = next(self._sequence)
        return f"{self._epoch + n // 1_000_000}.{n % 1_000_000:06d}"

    # events_api ----------------------------------------------------------

    def events_api(
        self,
        event: Mapping[str, Any],
        *,
        event_id: str | None = None,
        envelope_id: str | None = None,
        event_time: int | None = None,
    ) -> dict[str, Any]:
        """An ``events_api`` envelope around ``event`` (first delivery: retry_attempt 0).

        Parameters
        ----------
        event
            The inner event (``{"type": "message", ...}``); copied.
        event_id, envelope_id
            Fixed ids instead of fresh ones.
        event_time
            Unix time of the event; now by default.
        """
        event_dict = copy.deepcopy(dict(event))
        if "type" not in event_dict:
            raise SimulatorError("an events_api event needs a 'type'")
        authorization: dict[str, Any] = {
            "enterprise_id": self.enterprise_id,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "is_bot": True,
            "is_enterprise_install": False,
        }
        payload: dict[str, Any] = {
            "token": "simulated-verification-token",
            "team_id": self.team_id,
            "enterprise_id": self.enterprise_id,
            "api_app_id": self.api_app_id,
            "event": event_dict,
            "type": "event_callback",
            "event_id": event_id or self.event_id(),
            "event_time": event_time if event_time is not None else self._epoch_now(),
            "authorizations": [authorization],
            "is_ext_shared_channel": False,
            "event_context": "4-" + self.envelope_id().replace("-", ""),
        }
        if self.enterprise_id is None:
            del payload["enterprise_id"]
        return {
            "envelope_id": envelope_id or self.envelope_id(),
            "payload": payload,
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": 0,
            "retry_reason": "",
        }

    def _epoch_now(self) -> int:
        # A seeded factory replays exactly, event times included.
        if self._seeded:
            return self._epoch + next(self._sequence)
        return int(time.time())

    def message(
        self,
        text: str = "hello",
        *,
        channel: str | None = None,
        user: str | None = None,
        thread_ts: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A ``message`` event envelope (a user posting in a channel).

        Extra keyword arguments become fields of the inner event.
        """
        ts = self._ts()
        event: dict[str, Any] = {
            "type": "message",
            "channel": channel or self.channel_id,
            "user": user or self.user_id,
            "text": text,
            "ts": ts,
            "event_ts": ts,
            "channel_type": "channel",
            "team": self.team_id,
            "client_msg_id": self.envelope_id(),
        }
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        event.update(fields)
        return self.events_api(event)

    def app_mention(
        self,
        text: str = "please help",
        *,
        channel: str | None = None,
        user: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """An ``app_mention`` event envelope; the text starts with the bot's mention."""
        ts = self._ts()
        event: dict[str, Any] = {
            "type": "app_mention",
            "channel": channel or self.channel_id,
            "user": user or self.user_id,
            "text": f"<@{self.bot_user_id}> {text}",
            "ts": ts,
            "event_ts": ts,
            "team": self.team_id,
            "client_msg_id": self.envelope_id(),
        }
        event.update(fields)
        return self.events_api(event)

    def reaction_added(
        self,
        reaction: str = "thumbsup",
        *,
        channel: str | None = None,
        user: str | None = None,
        item_ts: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A ``reaction_added`` event envelope (the channel is in ``event.item``)."""
        event: dict[str, Any] = {
            "type": "reaction_added",
            "user": user or self.user_id,
            "reaction": reaction,
            "item": {
                "type": "message",
                "channel": channel or self.channel_id,
                "ts": item_ts or self._ts(),
            },
            "item_user": self.bot_user_id,
            "event_ts": self._ts(),
        }
        event.update(fields)
        return self.events_api(event)

    # slash_commands --------------------------------------------------------

    def slash_command(
        self,
        command: str = "/deploy",
        text: str = "",
        *,
        channel: str | None = None,
        user: str | None = None,
        envelope_id: str | None = None,
    ) -> dict[str, Any]:
        """A ``slash_commands`` envelope; it accepts a response payload in the ack."""
        if not command.startswith("/"):
            raise SimulatorError(f"a slash command starts with '/': {command!r}")
        channel_id = channel or self.channel_id
        user_id = user or self.user_id
        return {
            "envelope_id": envelope_id or self.envelope_id(),
            "payload": {
                "token": "simulated-verification-token",
                "team_id": self.team_id,
                "team_domain": "simulated",
                "channel_id": channel_id,
                "channel_name": "general",
                "user_id": user_id,
                "user_name": "simulated.user",
                "command": command,
                "text": text,
                "api_app_id": self.api_app_id,
                "is_enterprise_install": "false",
                "response_url": f"https://hooks.slack.com/commands/{self.team_id}/0/simulated",
                "trigger_id": self._trigger_id(),
            },
            "type": "slash_commands",
            "accepts_response_payload": True,
        }

    # interactive -----------------------------------------------------------

    def _interactive_common(self, user_id: str) -> dict[str, Any]:
        return {
            "user": {
                "id": user_id,
                "username": "simulated.user",
                "name": "simulated.user",
                "team_id": self.team_id,
            },
            "api_app_id": self.api_app_id,
            "token": "simulated-verification-token",
            "trigger_id": self._trigger_id(),
            "team": {"id": self.team_id, "domain": "simulated"},
            "enterprise": None,
            "is_enterprise_install": False,
        }

    def block_actions(
        self,
        action_id: str = "approve",
        value: str = "yes",
        *,
        block_id: str = "actions",
        channel: str | None = None,
        user: str | None = None,
        envelope_id: str | None = None,
    ) -> dict[str, Any]:
        """An ``interactive`` ``block_actions`` envelope: a button clicked in a message."""
        channel_id = channel or self.channel_id
        message_ts = self._ts()
        payload = {
            "type": "block_actions",
            **self._interactive_common(user or self.user_id),
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel_id,
                "is_ephemeral": False,
            },
            "channel": {"id": channel_id, "name": "general"},
            "message": {
                "type": "message",
                "user": self.bot_user_id,
                "ts": message_ts,
                "text": "Approve?",
            },
            "state": {"values": {}},
            "response_url": f"https://hooks.slack.com/actions/{self.team_id}/0/simulated",
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": block_id,
                    "text": {"type": "plain_text", "text": action_id},
                    "value": value,
                    "action_ts": self._ts(),
                }
            ],
        }
        return {
            "envelope_id": envelope_id or self.envelope_id(),
            "payload": payload,
            "type": "interactive",
            "accepts_response_payload": False,
        }

    def view_submission(
        self,
        callback_id: str = "modal",
        values: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        user: str | None = None,
        envelope_id: str | None = None,
    ) -> dict[str, Any]:
        """An ``interactive`` ``view_submission`` envelope; it accepts a response payload.

        Parameters
        ----------
        values
            ``view.state.values``: ``{block_id: {action_id: {...}}}``.
        """
        view_id = "V" + self.event_id()[2:]
        payload = {
            "type": "view_submission",
            **self._interactive_common(user or self.user_id),
            "view": {
                "id": view_id,
                "team_id": self.team_id,
                "type": "modal",
                "callback_id": callback_id,
                "private_metadata": "",
                "title": {"type": "plain_text", "text": "Simulated"},
                "blocks": [],
                "state": {"values": copy.deepcopy(dict(values or {}))},
                "hash": self.event_id(),
                "app_id": self.api_app_id,
                "bot_id": "B0SIMBOT",
            },
            "response_urls": [],
        }
        return {
            "envelope_id": envelope_id or self.envelope_id(),
            "payload": payload,
            "type": "interactive",
            "accepts_response_payload": True,
        }

    # retries ---------------------------------------------------------------

    def retry_of(
        self,
        envelope: Mapping[str, Any],
        *,
        reason: str = "timeout",
        attempt: int | None = None,
    ) -> dict[str, Any]:
        """The retry Slack sends for ``envelope``: a new envelope, the same payload.

        Parameters
        ----------
        envelope
            The envelope (first delivery or an earlier retry) being retried.
        reason
            ``retry_reason``: Slack uses ``"timeout"``, ``"http_timeout"``,
            ``"http_error"`` and others.
        attempt
            ``retry_attempt``; one more than the envelope's by default.

        Raises
        ------
        SimulatorError
            ``envelope`` has no ``payload``.
        """
        if not isinstance(envelope.get("payload"), Mapping):
            raise SimulatorError("only an envelope with a payload can be retried")
        retry = copy.deepcopy(dict(envelope))
        previous = envelope.get("retry_attempt")
        retry["envelope_id"] = self.envelope_id()
        retry["retry_attempt"] = (
            attempt if attempt is not None else (previous if isinstance(previous, int) else 0) + 1
        )
        retry["retry_reason"] = reason
        return retry
