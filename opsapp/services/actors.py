"""Who did something: a user through the admin, a named CLI user, or cron."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class Actor:
    username: str
    user_id: int | None = None
    client_ip: str | None = None
    user_agent: str = ""
    user: object | None = None  # the User instance when there is one

    @classmethod
    def from_user(cls, user, *, client_ip: str | None = None, user_agent: str = "") -> Actor:
        return cls(
            username=user.get_username(), user_id=user.pk, client_ip=client_ip, user_agent=user_agent[:500], user=user
        )

    @classmethod
    def from_request(cls, request) -> Actor:
        """The logged-in user plus the real client IP (OPS_CLIENT_IP_HEADERS) and user agent."""
        return cls.from_user(
            request.user, client_ip=client_ip(request), user_agent=request.META.get("HTTP_USER_AGENT", "")
        )

    @classmethod
    def cron(cls) -> Actor:
        return cls(username="cron")

    @classmethod
    def cli(cls, name: str) -> Actor:
        return cls(username=f"cli:{name}")


def client_ip(request) -> str | None:
    """The client address: the first configured header present (proxy-aware), else REMOTE_ADDR.

    For a list-valued header such as X-Forwarded-For the rightmost entry is
    used: it is the one the trusted proxy appended; entries to its left come
    from the client and can be forged.
    """
    for header in settings.OPS_CLIENT_IP_HEADERS:
        value = request.META.get(header)
        if value:
            return value.split(",")[-1].strip() or None
    return request.META.get("REMOTE_ADDR") or None
