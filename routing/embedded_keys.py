"""The embedded broker's commands on keys, strings and hashes, with Redis' replies and errors,
and the Lua scripts it recognises (there is no Lua interpreter: a known script's text maps to a
Python function).

Each handler takes the keyspace and the command's arguments (``args[0]`` is the command name)
and returns a reply; failures raise :class:`~routing.resp.CommandError`. Arity has been checked
by the caller (``routing.embedded_commands``) against the table here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from routing.embedded_store import Keyspace
from routing.resp import OK, CommandError, Map, Reply, Status

KeyHandler = Callable[[Keyspace, list[bytes]], Reply]
#: A script we run natively: (keyspace, KEYS, ARGV) -> reply.
ScriptHandler = Callable[[Keyspace, list[bytes], list[bytes]], Reply]

#: name -> (handler, arity); arity as Redis counts it: exact if positive, at least -n if negative.
KEY_COMMANDS: dict[bytes, tuple[KeyHandler, int]] = {}

NOT_INTEGER = "ERR value is not an integer or out of range"
SYNTAX = "ERR syntax error"
_INT64 = re.compile(rb"-?(0|[1-9][0-9]{0,18})\Z")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Largest TTL in milliseconds we accept (Redis refuses what would overflow a 64-bit time).
_MAX_TTL_MS = 2**62

#: The lock release the Redis store runs: delete the key only if it still holds our token.
COMPARE_AND_DELETE = (
    'if redis.call("get",KEYS[1]) == ARGV[1] then return redis.call("del",KEYS[1]) '
    "else return 0 end"
)


def key_command(name: str, arity: int) -> Callable[[KeyHandler], KeyHandler]:
    def register(handler: KeyHandler) -> KeyHandler:
        KEY_COMMANDS[name.encode()] = (handler, arity)
        return handler

    return register


def parse_int(raw: bytes, error: str = NOT_INTEGER) -> int:
    """A 64-bit integer written as Redis writes one (no sign but '-', no spaces)."""
    if not _INT64.match(raw):
        raise CommandError(error)
    value = int(raw)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise CommandError(error)
    return value


def wrong_arguments(name: bytes) -> CommandError:
    return CommandError(
        f"ERR wrong number of arguments for '{name.decode(errors='replace')}' command"
    )


# -- strings -------------------------------------------------------------------------------


@key_command("get", 2)
def _get(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return keyspace.get_string(args[1])


@key_command("mget", -2)
def _mget(keyspace: Keyspace, args: list[bytes]) -> Reply:
    values: list[Reply] = []
    for key in args[1:]:
        value = keyspace.get(key)
        values.append(value if isinstance(value, bytes) else None)
    return values


@dataclass
class _SetOptions:
    nx: bool = False
    xx: bool = False
    get: bool = False
    keep_ttl: bool = False
    deadline: int | None = None


@key_command("set", -3)
def _set(keyspace: Keyspace, args: list[bytes]) -> Reply:
    key, value = args[1], args[2]
    options = _set_options(keyspace, args[3:])
    if options.get:
        old: Reply = keyspace.get_string(key)
        exists = old is not None
    else:
        old, exists = OK, keyspace.get(key) is not None
    if (options.nx and exists) or (options.xx and not exists):
        return old if options.get else None
    keyspace.set(key, value, keep_ttl=options.keep_ttl)
    if options.deadline is not None:
        keyspace.set_deadline(key, options.deadline)
    return old


def _set_options(keyspace: Keyspace, words: list[bytes]) -> _SetOptions:
    options = _SetOptions()
    expiry = False
    i = 0
    while i < len(words):
        word = words[i].upper()
        if word in (b"NX", b"XX") and not (options.nx or options.xx):
            options.nx, options.xx = word == b"NX", word == b"XX"
        elif word == b"GET" and not options.get:
            options.get = True
        elif word == b"KEEPTTL" and not expiry:
            options.keep_ttl = expiry = True
        elif word in (b"EX", b"PX", b"EXAT", b"PXAT") and not expiry and i + 1 < len(words):
            i += 1
            options.deadline = _set_deadline(keyspace, word, words[i])
            expiry = True
        else:
            raise CommandError(SYNTAX)
        i += 1
    return options


def _set_deadline(keyspace: Keyspace, unit: bytes, raw: bytes) -> int:
    amount = parse_int(raw)
    if amount <= 0 or amount > _MAX_TTL_MS // 1000:
        raise CommandError("ERR invalid expire time in 'set' command")
    ms = amount * 1000 if unit in (b"EX", b"EXAT") else amount
    if unit in (b"EXAT", b"PXAT"):
        ms -= int(time.time() * 1000)
    return keyspace.now_ms() + ms


def _increment(keyspace: Keyspace, key: bytes, delta: int) -> int:
    raw = keyspace.get_string(key)
    result = (0 if raw is None else parse_int(raw)) + delta
    if not _INT64_MIN <= result <= _INT64_MAX:
        raise CommandError("ERR increment or decrement would overflow")
    keyspace.set(key, b"%d" % result, keep_ttl=True)
    return result


@key_command("incr", 2)
def _incr(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return _increment(keyspace, args[1], 1)


@key_command("decr", 2)
def _decr(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return _increment(keyspace, args[1], -1)


@key_command("incrby", 3)
def _incrby(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return _increment(keyspace, args[1], parse_int(args[2]))


@key_command("decrby", 3)
def _decrby(keyspace: Keyspace, args: list[bytes]) -> Reply:
    delta = parse_int(args[2])
    if delta == _INT64_MIN:
        raise CommandError("ERR decrement would overflow")
    return _increment(keyspace, args[1], -delta)


# -- keys ----------------------------------------------------------------------------------


@key_command("del", -2)
def _del(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return sum(keyspace.delete(key) for key in args[1:])


@key_command("exists", -2)
def _exists(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return sum(keyspace.get(key) is not None for key in args[1:])


@key_command("type", 2)
def _type(keyspace: Keyspace, args: list[bytes]) -> Reply:
    value = keyspace.get(args[1])
    return Status("none" if value is None else "hash" if isinstance(value, dict) else "string")


def _expire(keyspace: Keyspace, args: list[bytes], unit_ms: int) -> Reply:
    amount = parse_int(args[2])
    flags = _expire_flags(args[3:])
    if abs(amount) > _MAX_TTL_MS // unit_ms:
        name = args[0].lower().decode(errors="replace")
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    key = args[1]
    if keyspace.get(key) is None:
        return 0
    now = keyspace.now_ms()
    deadline = now + amount * unit_ms
    current = keyspace.deadline(key)
    if b"NX" in flags and current is not None:
        return 0
    if b"XX" in flags and current is None:
        return 0
    if b"GT" in flags and (current is None or deadline <= current):
        return 0
    if b"LT" in flags and current is not None and deadline >= current:
        return 0
    if deadline <= now:
        keyspace.delete(key)
    else:
        keyspace.set_deadline(key, deadline)
    return 1


def _expire_flags(words: list[bytes]) -> set[bytes]:
    flags: set[bytes] = set()
    for word in words:
        flag = word.upper()
        if flag not in (b"NX", b"XX", b"GT", b"LT"):
            raise CommandError(f"ERR Unsupported option {word.decode(errors='replace')}")
        flags.add(flag)
    if b"NX" in flags and len(flags) > 1:
        raise CommandError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if {b"GT", b"LT"} <= flags:
        raise CommandError("ERR GT and LT options at the same time are not compatible")
    return flags


@key_command("expire", -3)
def _expire_s(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return _expire(keyspace, args, 1000)


@key_command("pexpire", -3)
def _expire_ms(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return _expire(keyspace, args, 1)


@key_command("persist", 2)
def _persist(keyspace: Keyspace, args: list[bytes]) -> Reply:
    if keyspace.get(args[1]) is None or keyspace.deadline(args[1]) is None:
        return 0
    keyspace.set_deadline(args[1], None)
    return 1


def _remaining_ms(keyspace: Keyspace, key: bytes) -> int | None:
    """Milliseconds left, -1 without a deadline, None if the key does not exist."""
    if keyspace.get(key) is None:
        return None
    deadline = keyspace.deadline(key)
    return -1 if deadline is None else max(deadline - keyspace.now_ms(), 0)


@key_command("ttl", 2)
def _ttl(keyspace: Keyspace, args: list[bytes]) -> Reply:
    left = _remaining_ms(keyspace, args[1])
    if left is None:
        return -2
    return -1 if left < 0 else (left + 500) // 1000


@key_command("pttl", 2)
def _pttl(keyspace: Keyspace, args: list[bytes]) -> Reply:
    left = _remaining_ms(keyspace, args[1])
    return -2 if left is None else left


@key_command("keys", 2)
def _keys(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return list[Reply](keyspace.keys(args[1]))


@key_command("scan", -2)
def _scan(keyspace: Keyspace, args: list[bytes]) -> Reply:
    """One step covers the whole keyspace (cursor 0 back), which Redis' contract allows: the
    keyspace of a cluster's rooms and nodes is small, and no cursor state has to be kept."""
    if not re.fullmatch(rb"[0-9]{1,20}", args[1]):
        raise CommandError("ERR invalid cursor")
    pattern: bytes | None = None
    kind: bytes | None = None
    words = args[2:]
    for i in range(0, len(words), 2):
        option = words[i].upper()
        if i + 1 >= len(words) or option not in (b"MATCH", b"COUNT", b"TYPE"):
            raise CommandError(SYNTAX)
        if option == b"MATCH":
            pattern = words[i + 1]
        elif option == b"TYPE":
            kind = words[i + 1].lower()
        elif parse_int(words[i + 1]) < 1:
            raise CommandError(SYNTAX)
    keys = keyspace.keys(pattern)
    if kind is not None:
        keys = [key for key in keys if _kind(keyspace, key) == kind]
    return [b"0", list[Reply](keys)]


def _kind(keyspace: Keyspace, key: bytes) -> bytes:
    return b"hash" if isinstance(keyspace.get(key), dict) else b"string"


@key_command("dbsize", 1)
def _dbsize(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return len(keyspace)


def _flush(keyspace: Keyspace, args: list[bytes]) -> Reply:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError(SYNTAX)
    keyspace.flush()
    return OK


key_command("flushdb", -1)(_flush)
key_command("flushall", -1)(_flush)


# -- hashes --------------------------------------------------------------------------------


def _hash_pairs(args: list[bytes]) -> list[tuple[bytes, bytes]]:
    if len(args) % 2:
        raise wrong_arguments(args[0].lower())
    return list(zip(args[2::2], args[3::2], strict=True))


@key_command("hset", -4)
def _hset(keyspace: Keyspace, args: list[bytes]) -> Reply:
    pairs = _hash_pairs(args)
    value = keyspace.hash_for_write(args[1])
    added = 0
    for field, content in pairs:
        added += field not in value
        value[field] = content
    return added


@key_command("hmset", -4)
def _hmset(keyspace: Keyspace, args: list[bytes]) -> Reply:
    _hset(keyspace, args)
    return OK


@key_command("hsetnx", 4)
def _hsetnx(keyspace: Keyspace, args: list[bytes]) -> Reply:
    value = keyspace.get_hash(args[1])
    if value is not None and args[2] in value:
        return 0
    keyspace.hash_for_write(args[1])[args[2]] = args[3]
    return 1


@key_command("hget", 3)
def _hget(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return (keyspace.get_hash(args[1]) or {}).get(args[2])


@key_command("hmget", -3)
def _hmget(keyspace: Keyspace, args: list[bytes]) -> Reply:
    value = keyspace.get_hash(args[1]) or {}
    return [value.get(field) for field in args[2:]]


@key_command("hdel", -3)
def _hdel(keyspace: Keyspace, args: list[bytes]) -> Reply:
    value = keyspace.get_hash(args[1])
    if value is None:
        return 0
    removed = 0
    for field in args[2:]:
        removed += value.pop(field, None) is not None
    if removed:
        keyspace.touch(args[1])
    if not value:
        keyspace.delete(args[1])
    return removed


@key_command("hgetall", 2)
def _hgetall(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return Map(list((keyspace.get_hash(args[1]) or {}).items()))


@key_command("hkeys", 2)
def _hkeys(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return list[Reply](keyspace.get_hash(args[1]) or {})


@key_command("hvals", 2)
def _hvals(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return list[Reply]((keyspace.get_hash(args[1]) or {}).values())


@key_command("hlen", 2)
def _hlen(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return len(keyspace.get_hash(args[1]) or {})


@key_command("hexists", 3)
def _hexists(keyspace: Keyspace, args: list[bytes]) -> Reply:
    return int(args[2] in (keyspace.get_hash(args[1]) or {}))


# -- scripts: recognised by their text, since there is no Lua here ---------------------------


def normalize_script(source: bytes) -> str:
    """The script's text with layout and quoting that do not change its meaning removed."""
    text = source.decode("utf-8", "replace").replace("'", '"')
    text = re.sub(r"\s+", " ", text).strip().rstrip(";").strip()
    text = re.sub(r" ?([()\[\],=~<>;]) ?", r"\1", text)
    return re.sub(r'redis\.call\("(\w+)"', lambda m: f'redis.call("{m[1].lower()}"', text)


def _compare_and_delete(keyspace: Keyspace, keys: list[bytes], argv: list[bytes]) -> Reply:
    if not keys or not argv:
        raise CommandError("ERR the compare-and-delete script needs one key and one argument")
    if keyspace.get_string(keys[0]) == argv[0]:
        return int(keyspace.delete(keys[0]))
    return 0


#: The scripts we recognise, by normalized text: the embedded broker has no Lua.
KNOWN_SCRIPTS: dict[str, ScriptHandler] = {
    normalize_script(COMPARE_AND_DELETE.encode()): _compare_and_delete,
}


def script_handler(source: bytes) -> ScriptHandler:
    handler = KNOWN_SCRIPTS.get(normalize_script(source))
    if handler is None:
        raise CommandError(
            "ERR the embedded broker runs no Lua: only the compare-and-delete lock release "
            "script is supported"
        )
    return handler
