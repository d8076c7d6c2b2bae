"""The sign-up example's work: create the account, then notify and welcome the user."""

from __future__ import annotations

from typing import Any


def create_account(form: dict[str, Any]) -> dict[str, Any]:
    n = int(form["n"])
    channel = "fax" if n == 7 else ("sms" if n % 3 == 0 else "email")
    return {
        "user": f"user-{n}",
        "email": f"user-{n}@example.com",
        "phone": f"+1-555-01{n:02d}",
        "channel": channel,
    }


def welcome_email(user: dict[str, Any]) -> dict[str, Any]:
    print(f"welcome email -> {user['email']}", flush=True)
    return {"user": user["user"], "sent": "welcome"}


def notify_email(user: dict[str, Any]) -> dict[str, Any]:
    print(f"notification email -> {user['email']}", flush=True)
    return {"user": user["user"], "sent": "email"}


def notify_sms(user: dict[str, Any]) -> dict[str, Any]:
    print(f"notification sms -> {user['phone']}", flush=True)
    return {"user": user["user"], "sent": "sms"}
