"""argon2id hashing: what is stored, and verification."""

from __future__ import annotations

import asyncio

from gateway.passwords import Passwords


def fast(**kwargs: int) -> Passwords:
    return Passwords(time_cost=1, memory_kib=8192, parallelism=1, **kwargs)


def test_hash_is_argon2id_with_the_configured_parameters() -> None:
    stored = asyncio.run(fast().hash("correct horse"))
    assert stored.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert "correct horse" not in stored


def test_verify() -> None:
    passwords = fast()

    async def scenario() -> tuple[bool, bool, bool, bool]:
        stored = await passwords.hash("correct horse")
        return (
            await passwords.verify(stored, "correct horse"),
            await passwords.verify(stored, "wrong horse"),
            await passwords.verify(None, "correct horse"),  # unknown user
            await passwords.verify("not-a-hash", "correct horse"),
        )

    assert asyncio.run(scenario()) == (True, False, False, False)


def test_hashes_of_the_same_password_differ() -> None:
    passwords = fast()
    assert asyncio.run(passwords.hash("same")) != asyncio.run(passwords.hash("same"))


def test_old_parameters_need_a_rehash() -> None:
    old = asyncio.run(fast().hash("pw"))
    stronger = Passwords(time_cost=2, memory_kib=8192, parallelism=1)
    assert stronger.needs_rehash(old)
    assert not fast().needs_rehash(old)
    assert not fast().needs_rehash("garbage")
