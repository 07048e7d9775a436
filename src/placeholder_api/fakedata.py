"""Deterministic, generated JSONPlaceholder data, computed one record at a time.

Every record is a pure function of ``(resource, id, seed)``: a 64-bit hash of the three
(murmur3's finaliser, no ``random.Random`` per record) picks words from small lists and
pools of pre-built phrases. Nothing is cached, so a server can offer a million users
(500 million photos) with flat memory and serve any page in O(page size).

Sizes follow :data:`placeholder_api.resources.RESOURCES` (posts 10 per user, comments 5
per post, albums 10 per user, photos 50 per album, todos 20 per user) and parents are
plain arithmetic: post ``i`` belongs to user ``(i - 1) // 10 + 1``, and so on.

Shapes and key order are exactly those of the real API. Some values carry commas,
double quotes, non-ASCII letters (``Zoë``, ``Ægir``) and bodies carry ``\\n`` line
breaks, so CSV quoting and UTF-8 handling get exercised downstream.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable

from placeholder_api.resources import RESOURCES

__all__ = ["children_range", "make_record", "make_records", "parent_block"]

Record = dict[str, object]

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_K1 = 0xD6E8FEB86659FD93
_K2 = 0xA0761D6478BD642F
_RESOURCE_CODES = {name: index + 1 for index, name in enumerate(RESOURCES)}


def _mix(x: int) -> int:
    """Murmur3's 64-bit finaliser: a fast bijection with full avalanche."""
    x = ((x ^ (x >> 33)) * 0xFF51AFD7ED558CCD) & _M64
    x = ((x ^ (x >> 33)) * 0xC4CEB9FE1A85EC53) & _M64
    return x ^ (x >> 33)


def _stream_base(resource: str, seed: int) -> int:
    """The per-(resource, seed) starting point of the record hashes."""
    return _mix((seed & _M64) ^ _mix(_RESOURCE_CODES[resource] * _GOLDEN & _M64))


# --------------------------------------------------------------------------- word lists


def _words(text: str) -> tuple[str, ...]:
    """The whitespace-separated words of ``text``."""
    return tuple(text.split())


_FIRST_NAMES = _words(
    "Leanne Ervin Clementine Patricia Chelsey Dennis Kurtis Nicholas Glenna Clementina "
    "Zoë Ægir José Renée Björn Chloé Søren Łukasz Noémie Jürgen Maëlle Íñigo Åsa Frédéric "
    "Eliseo Jayne Nikita Lew Hayden Presley Dallas Mallory Meghan Carmen Veronica Oswald "
    "Kariane Nathan Julianne Lucio Karley Telly Sherwood Chaim Rey Maxime Delphine Moriah"
)
_LAST_NAMES = _words(
    "Graham Howell Bauch Lebsack Dietrich Schulist Weissnat Runolfsdottir Reichert "
    "DuBuque Kulas Romaguera Crona Deckow Crist Jacobson Robel Corkery Keebler Considine "
    "Lockman Abernathy Yost Hoeger Skiles Nienow Stanton Padberg McDermott Hettinger Dach "
    "Müller Ødegård Nuñez Østergaard Gauthier Lindqvist Åberg Schäfer Peña Kowalczyk "
    "Wunsch Stark Hane Kuhic Gardner Kessler Mraz Block Wisoky Koepp"
)
_STREET_SUFFIXES = _words(
    "Light Plains Extension Hills Skyway Stravenue Way Mall Crossing Gardens Road Street "
    "Avenue Lane Court Drive Route Junction Parkway Terrace"
)
_CITY_SUFFIXES = (
    *_words("borough burgh haven view mouth bury ville fort port side stad town chester"),
    " Falls",
    " Springs",
)
_CITY_PREFIXES = _words("South North East West Lake Port New")
_DOMAIN_WORDS = _words(
    "april melissa yesenia kory annie jasper billy rosamond dana karina gardner sydney "
    "alison elvis jaden lew hayden nikita marcia ben"
)
_TLDS = _words("org net info biz com io me ca tv")
_CATCH_A = _words(
    "Multi-layered Proactive Face-to-face Multi-tiered User-centric Synchronised "
    "Configurable Implemented Switchable Centralized Re-engineered Cross-platform "
    "Ergonomic Fundamental Polarised Persevering Streamlined Visionary"
)
_CATCH_B = _words(
    "client-server didactic bifurcated secondary heuristic 6th-generation disintermediate "
    "24-hour optimal zero-tolerance actuating explicit real-time tertiary dedicated "
    "well-modulated"
)
_CATCH_C = _words(
    "neural-net contingency attitude moderator algorithm intranet capacity extranet "
    "toolset framework hub matrix superstructure paradigm interface firmware"
)
_BS_VERBS = _words(
    "harness synergize e-enable transition revolutionize aggregate target generate "
    "enhance iterate reinvent embrace empower orchestrate deliver"
)
_BS_ADJECTIVES = _words(
    "real-time scalable cutting-edge end-to-end bricks-and-clicks B2C magnetic ubiquitous "
    "next-generation wireless rich dynamic sticky viral holistic global"
)
_BS_NOUNS = _words(
    "e-markets supply-chains models action-items e-business partnerships web-readiness "
    "synergies communities mindshare interfaces portals channels experiences platforms"
)
_PHONE_FORMATS = (
    "1-{0:03d}-{1:03d}-{2:04d} x{3:05d}",
    "{0:03d}-{1:03d}-{2:04d} x{3:05d}",
    "1-{0:03d}-{1:03d}-{2:04d}",
    "({0:03d}){1:03d}-{2:04d}",
    "{0:03d}.{1:03d}.{2:04d}",
    "{0:03d}.{1:03d}.{2:04d} x{3}",
    "({0:03d}){1:03d}-{2:04d} x{3}",
    "{0:03d}-{1:03d}-{2:04d}",
)
_LOREM = _words(
    "a ab accusamus accusantium ad adipisci alias aliquam aliquid amet animi aperiam "
    "architecto asperiores aspernatur assumenda at atque aut autem beatae blanditiis "
    "commodi consectetur consequatur consequuntur corporis corrupti culpa cum cumque "
    "cupiditate debitis delectus deleniti deserunt dicta dignissimos distinctio dolor "
    "dolore dolorem doloremque dolores doloribus dolorum ducimus ea eaque earum eius "
    "eligendi enim eos error esse est et eum eveniet ex excepturi exercitationem expedita "
    "explicabo facere facilis fuga fugiat fugit harum hic id illo illum impedit in "
    "incidunt inventore ipsa ipsam ipsum iste itaque iure iusto labore laboriosam laborum "
    "laudantium libero magnam magni maiores maxime minima minus modi molestiae molestias "
    "mollitia nam natus necessitatibus nemo neque nesciunt nihil nisi nobis non nostrum "
    "nulla numquam obcaecati odio odit officia officiis omnis optio pariatur perferendis "
    "perspiciatis placeat porro possimus praesentium provident quae quaerat quam quas "
    "quasi qui quia quibusdam quidem quis quisquam quo quod quos ratione recusandae "
    "reiciendis rem repellat repellendus reprehenderit repudiandae rerum saepe sapiente "
    "sed sequi similique sint sit soluta sunt suscipit tempora tempore temporibus tenetur "
    "totam ullam unde ut vel velit veniam veritatis vero vitae voluptas voluptate "
    "voluptatem voluptates voluptatibus voluptatum æternum cœlum prœlium fœdus"
)

_ASCII_FOLD = str.maketrans(
    {"Æ": "Ae", "æ": "ae", "Ø": "O", "ø": "o", "Ł": "L", "ł": "l", "ß": "ss", "'": ""}
)


def _ascii(text: str) -> str:
    """Fold a name to ASCII for usernames, emails and host names (``Zoë`` -> ``Zoe``)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_ASCII_FOLD))
    return decomposed.encode("ascii", "ignore").decode("ascii")


_FIRST = tuple((name, _ascii(name)) for name in _FIRST_NAMES)
_LAST = tuple((name, _ascii(name)) for name in _LAST_NAMES)


def _phrase(rng: random.Random, low: int, high: int) -> str:
    """A lorem phrase; a few get a comma or a double-quoted word (CSV quoting bait)."""
    words = [rng.choice(_LOREM) for _ in range(rng.randint(low, high))]
    roll = rng.random()
    if roll < 0.05 and len(words) > 1:
        words[0] += ","
    elif roll < 0.08:
        words[-1] = f'"{words[-1]}"'
    return " ".join(words)


def _build_pool(size: int, low: int, high: int, salt: int) -> tuple[str, ...]:
    """A fixed pool of phrases (independent of the seed, which only picks among them)."""
    rng = random.Random(salt)
    return tuple(_phrase(rng, low, high) for _ in range(size))


_TITLE_PARTS = _build_pool(1024, 2, 5, 0x7171E)
_BODY_LINES = _build_pool(2048, 5, 10, 0xB0D1)
_N_TITLE = len(_TITLE_PARTS)
_N_BODY = len(_BODY_LINES)

# --------------------------------------------------------------------------- pieces


def _title(h: int) -> str:
    """Two pooled phrases: about 4 to 10 words, like the real post and photo titles."""
    return f"{_TITLE_PARTS[h % _N_TITLE]} {_TITLE_PARTS[(h >> 10) % _N_TITLE]}"


def _body(h: int) -> str:
    """Three to five pooled lines joined with ``\\n``, like the real bodies."""
    lines = 3 + (h % 3)
    h >>= 2
    picks = []
    for _ in range(lines):
        picks.append(_BODY_LINES[h % _N_BODY])
        h >>= 11
    return "\n".join(picks)


def _email(h: int) -> str:
    """A person's email such as ``Zoe.Kulas@april.biz`` (ASCII only)."""
    first = _FIRST[h % _N_FIRST][1]
    last = _LAST[(h >> 6) % _N_LAST][1]
    local = (first, f"{first}.{last}", f"{first}_{last}", last)[(h >> 21) & 3]
    return f"{local}@{_DOMAIN_WORDS[(h >> 12) % _N_DOMAIN]}.{_TLDS[(h >> 17) % _N_TLD]}"


def _company(rng: random.Random) -> tuple[str, str, str]:
    """A company; some names hold commas, some catch phrases hold double quotes."""
    a, b, c = (rng.choice(_LAST_NAMES) for _ in range(3))
    name = rng.choice(
        (f"{a}-{b}", f"{a} LLC", f"{a} Group", f"{a} and Sons", f"{a}-{b}", f"{a}, {b} and {c}")
    )
    first, second, noun = rng.choice(_CATCH_A), rng.choice(_CATCH_B), rng.choice(_CATCH_C)
    quoted = rng.random() < 0.12
    catch = f'{first} "{second}" {noun}' if quoted else f"{first} {second} {noun}"
    bs = f"{rng.choice(_BS_VERBS)} {rng.choice(_BS_ADJECTIVES)} {rng.choice(_BS_NOUNS)}"
    return name, catch, bs


def _street(rng: random.Random) -> str:
    """A street such as ``Kulas Light``."""
    return f"{rng.choice(_LAST_NAMES)} {rng.choice(_STREET_SUFFIXES)}"


def _city(rng: random.Random) -> str:
    """A city such as ``Gwenborough`` or ``South Zoë``."""
    if rng.random() < 0.75:
        return rng.choice(_LAST_NAMES) + rng.choice(_CITY_SUFFIXES)
    return f"{rng.choice(_CITY_PREFIXES)} {rng.choice(_FIRST_NAMES)}"


def _zipcode(rng: random.Random) -> str:
    """A 5-digit or ZIP+4 code."""
    zip5 = rng.randrange(100000)
    return f"{zip5:05d}" if rng.random() < 0.3 else f"{zip5:05d}-{rng.randrange(10000):04d}"


def _phone(rng: random.Random) -> str:
    """A phone number in one of the real data's formats."""
    fmt = rng.choice(_PHONE_FORMATS)
    return fmt.format(
        rng.randrange(200, 1000), rng.randrange(1000), rng.randrange(10000), rng.randrange(100000)
    )


def _coordinate(rng: random.Random, limit: int) -> str:
    """A latitude or longitude as the real data writes it: ``"-37.3159"``."""
    return f"{rng.randrange(-limit * 10000, limit * 10000 + 1) / 10000:.4f}"


_POOL = 4096  # pooled user parts: a power of two, picked with ``& _POOL_MASK``
_POOL_MASK = _POOL - 1
_POOL_RNG = random.Random(0xADD2E55)
_STREETS = tuple(_street(_POOL_RNG) for _ in range(_POOL))
_SUITES = tuple(f"Apt. {n:03d}" for n in range(1000)) + tuple(f"Suite {n}" for n in range(1048))
_CITIES = tuple(_city(_POOL_RNG) for _ in range(_POOL))
_ZIPCODES = tuple(_zipcode(_POOL_RNG) for _ in range(_POOL))
_LATS = tuple(_coordinate(_POOL_RNG, 90) for _ in range(_POOL))
_LNGS = tuple(_coordinate(_POOL_RNG, 180) for _ in range(_POOL))
_PHONES = tuple(_phone(_POOL_RNG) for _ in range(_POOL))
_COMPANIES = tuple(_company(_POOL_RNG) for _ in range(_POOL))
_N_FIRST = len(_FIRST)
_N_LAST = len(_LAST)
_N_DOMAIN = len(_DOMAIN_WORDS)
_N_TLD = len(_TLDS)


# --------------------------------------------------------------------------- records


def _user(record_id: int, x: int) -> Record:
    """One user: id, name, username, email, address, phone, website, company."""
    a = _mix(x)
    b = _mix(x ^ _K1)
    c = _mix(x ^ _K2)
    first, first_ascii = _FIRST[a % _N_FIRST]
    last, last_ascii = _LAST[(a >> 8) % _N_LAST]
    username = (
        first_ascii,
        f"{first_ascii}.{last_ascii}",
        f"{first_ascii}_{last_ascii}",
        last_ascii,
    )[(a >> 16) & 3]
    company = _COMPANIES[(c >> 24) & _POOL_MASK]
    return {
        "id": record_id,
        "name": f"{first} {last}",
        "username": f"{username}{record_id}",
        "email": f"{(first_ascii, username)[(a >> 18) & 1]}"
        f"@{_DOMAIN_WORDS[(a >> 19) % _N_DOMAIN]}.{_TLDS[(a >> 27) % _N_TLD]}",
        "address": {
            "street": _STREETS[b & _POOL_MASK],
            "suite": _SUITES[(b >> 12) & 2047],
            "city": _CITIES[(b >> 23) & _POOL_MASK],
            "zipcode": _ZIPCODES[(b >> 35) & _POOL_MASK],
            "geo": {"lat": _LATS[(b >> 47) & _POOL_MASK], "lng": _LNGS[c & _POOL_MASK]},
        },
        "phone": _PHONES[(c >> 12) & _POOL_MASK],
        "website": f"{_DOMAIN_WORDS[(a >> 35) % _N_DOMAIN]}.{_TLDS[(a >> 43) % _N_TLD]}",
        "company": {"name": company[0], "catchPhrase": company[1], "bs": company[2]},
    }


def _post(record_id: int, x: int) -> Record:
    """One post: userId, id, title, body."""
    h = _mix(x)
    return {
        "userId": (record_id - 1) // 10 + 1,
        "id": record_id,
        "title": _title(h),
        "body": _body(h >> 20),
    }


def _comment(record_id: int, x: int) -> Record:
    """One comment: postId, id, name, email, body."""
    h = _mix(x)
    return {
        "postId": (record_id - 1) // 5 + 1,
        "id": record_id,
        "name": _title(h),
        "email": _email(_mix(x ^ _K1)),
        "body": _body(h >> 20),
    }


def _album(record_id: int, x: int) -> Record:
    """One album: userId, id, title."""
    h = _mix(x)
    title = _TITLE_PARTS[h % _N_TITLE] if h & (1 << 40) else _title(h)
    return {"userId": (record_id - 1) // 10 + 1, "id": record_id, "title": title}


def _photo(record_id: int, x: int) -> Record:
    """One photo: albumId, id, title, url, thumbnailUrl (same colour in both URLs)."""
    h = _mix(x)
    color = f"{(h >> 24) & 0xFFFFFF:06x}"
    return {
        "albumId": (record_id - 1) // 50 + 1,
        "id": record_id,
        "title": _title(h),
        "url": f"https://via.placeholder.com/600/{color}",
        "thumbnailUrl": f"https://via.placeholder.com/150/{color}",
    }


def _todo(record_id: int, x: int) -> Record:
    """One todo: userId, id, title, completed (about 45 % done, like the real data)."""
    h = _mix(x)
    title = _TITLE_PARTS[h % _N_TITLE] if h & (1 << 40) else _title(h)
    return {
        "userId": (record_id - 1) // 20 + 1,
        "id": record_id,
        "title": title,
        "completed": (h >> 48) % 100 < 45,
    }


_GENERATORS: dict[str, Callable[[int, int], Record]] = {
    "users": _user,
    "posts": _post,
    "comments": _comment,
    "albums": _album,
    "photos": _photo,
    "todos": _todo,
}


def _generator(resource: str) -> Callable[[int, int], Record]:
    """The record builder of ``resource``.

    Raises:
        ValueError: ``resource`` is not a JSONPlaceholder resource.
    """
    try:
        return _GENERATORS[resource]
    except KeyError:
        raise ValueError(
            f"unknown resource {resource!r}: choose from {', '.join(_GENERATORS)}"
        ) from None


def make_record(resource: str, record_id: int, seed: int) -> Record:
    """Generate one record; pure and deterministic in ``(resource, record_id, seed)``.

    Args:
        resource: a name from :data:`~placeholder_api.resources.RESOURCES`.
        record_id: the 1-based id (no upper bound: the caller knows the dataset size).
        seed: the dataset's seed; another seed gives other values, same ids and parents.

    Returns:
        A new dict with the real API's keys, in the real API's order.

    Raises:
        ValueError: unknown resource or ``record_id < 1``.
    """
    generate = _generator(resource)
    if record_id < 1:
        raise ValueError(f"record ids start at 1, got {record_id}")
    return generate(record_id, (_stream_base(resource, seed) + record_id * _GOLDEN) & _M64)


def make_records(resource: str, start_id: int, stop_id: int, seed: int) -> list[Record]:
    """Generate the records with ids ``start_id <= id < stop_id`` (``stop_id`` excluded).

    Same values as :func:`make_record`, with the per-call overhead paid once.

    Raises:
        ValueError: unknown resource or ``start_id < 1``.
    """
    generate = _generator(resource)
    if start_id < 1:
        raise ValueError(f"record ids start at 1, got {start_id}")
    base = _stream_base(resource, seed)
    return [generate(i, (base + i * _GOLDEN) & _M64) for i in range(start_id, stop_id)]


def parent_block(resource: str) -> int:
    """How many ``resource`` records each parent has (posts: 10 per user); 0 if no parent."""
    res = RESOURCES[resource]
    if res.parent is None:
        return 0
    return res.per_user // RESOURCES[res.parent].per_user


def children_range(resource: str, parent: int) -> range:
    """Ids of the ``resource`` records whose parent has id ``parent`` (user 2 -> posts 11..20)."""
    block = parent_block(resource)
    if not block:
        raise ValueError(f"{resource} has no parent resource")
    return range((parent - 1) * block + 1, parent * block + 1)
