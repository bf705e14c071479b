"""Realistic Socket Mode envelopes: :mod:`recorder.simulator.envelopes`, re-exported here."""

from __future__ import annotations

from recorder.simulator.envelopes import EnvelopeFactory, SimulatorError

__all__ = ["EnvelopeFactory", "SimulatorError"]
