"""Mixed Slack envelopes for erasure tests: who each one is about, and who it mentions."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

SUBJECT = "U0SUBJECT"
#: A user whose id starts with the subject's: must never be touched.
LOOKALIKE = "U0SUBJECTX"
OTHERS = ("U0ALICE", "U0BOB", "U0CAROL", LOOKALIKE)
CHANNELS = ("C0GENERAL", "C0RANDOM", "C0PROJECT")


@dataclass(frozen=True, slots=True)
class Generated:
    envelope_id: str
    envelope: dict[str, Any]
    subject: bool
    """The subject user is its actor or the author of the message it carries."""
    mentions_subject: bool
    channel: str


def _message(n: int, user: str, channel: str, text: str) -> dict[str, Any]:
    return {
        "envelope_id": f"env-{n:05d}",
        "type": "events_api",
        "payload": {
            "team_id": "T0TEAM",
            "api_app_id": "A0APP",
            "event_id": f"Ev{n:05d}",
            "event": {"type": "message", "user": user, "channel": channel, "text": text},
        },
    }


def generate(count: int, *, seed: int = 12) -> list[Generated]:
    """``count`` envelopes of every shape erasure must handle, roughly 1 in 8 the subject's."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        channel = rng.choice(CHANNELS)
        other = rng.choice(OTHERS)
        shape = n % 16
        subject = False
        mentions = False
        if shape == 0:  # the subject's own message
            env = _message(n, SUBJECT, channel, f"hello from the subject {n}")
            subject = True
        elif shape == 1:  # someone else mentions the subject, and another user
            env = _message(n, other, channel, f"ping <@{SUBJECT}> and <@U0ALICE> re {n}")
            mentions = True
        elif shape == 2:  # a rich-text block mentioning the subject with a label
            env = _message(n, other, channel, f"cc <@{SUBJECT}|subject-name> {n}")
            env["payload"]["event"]["blocks"] = [
                {
                    "type": "rich_text",
                    "elements": [
                        {
                            "type": "rich_text_section",
                            "elements": [
                                {"type": "user", "user_id": SUBJECT},
                                {"type": "text", "text": f" keep this {n}"},
                                {"type": "user", "user_id": "U0BOB"},
                            ],
                        }
                    ],
                }
            ]
            mentions = True
        elif shape == 3:  # a slash command the subject ran
            env = {
                "envelope_id": f"env-{n:05d}",
                "type": "slash_commands",
                "payload": {
                    "team_id": "T0TEAM",
                    "channel_id": channel,
                    "user_id": SUBJECT,
                    "command": "/deploy",
                    "text": f"prod {n}",
                },
            }
            subject = True
        elif shape == 4:  # a button the subject pressed
            env = {
                "envelope_id": f"env-{n:05d}",
                "type": "interactive",
                "payload": {
                    "type": "block_actions",
                    "team": {"id": "T0TEAM"},
                    "user": {"id": SUBJECT, "name": "subject-name"},
                    "channel": {"id": channel},
                    "actions": [{"action_id": "approve", "value": str(n)}],
                },
            }
            subject = True
        elif shape == 5:  # a message shortcut someone else ran on the subject's message
            env = {
                "envelope_id": f"env-{n:05d}",
                "type": "interactive",
                "payload": {
                    "type": "message_action",
                    "team": {"id": "T0TEAM"},
                    "user": {"id": other},
                    "channel": {"id": channel},
                    "message": {"user": SUBJECT, "text": f"the subject wrote {n}"},
                },
            }
            subject = True
        elif shape == 6:  # someone shares the subject's message
            env = _message(n, other, channel, f"look at this {n}")
            env["payload"]["event"]["attachments"] = [
                {"is_share": True, "author_id": SUBJECT, "text": f"shared words {n}"}
            ]
            subject = True
        elif shape == 7:  # the subject edits a message
            env = {
                "envelope_id": f"env-{n:05d}",
                "type": "events_api",
                "payload": {
                    "team_id": "T0TEAM",
                    "event_id": f"Ev{n:05d}",
                    "event": {
                        "type": "message",
                        "subtype": "message_changed",
                        "channel": channel,
                        "message": {"user": SUBJECT, "text": f"edited {n}"},
                        "previous_message": {"user": SUBJECT, "text": f"original {n}"},
                    },
                },
            }
            subject = True
        elif shape == 8:  # a lookalike id: neither subject nor mention
            env = _message(n, LOOKALIKE, channel, f"I am <@{LOOKALIKE}> not the subject {n}")
        else:
            env = _message(n, other, channel, f"ordinary message {n} for <@U0CAROL>")
        out.append(Generated(f"env-{n:05d}", env, subject, mentions, channel))
    return out


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


class Clock:
    """A clock for SQLEventBuffer that ticks one second per call, from T0."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now
