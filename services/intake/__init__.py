"""Intake: the front door where petition widgets and partners hand in signatures.

A signature is answered 202 only once the broker holds it (``signatures.v2``, keyed by
case id); see ``signing`` for the order of checks and ``publisher`` for durability.
"""
