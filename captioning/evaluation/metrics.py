"""The COCO caption metrics as papers report them, through ``pycocoevalcap``.

PTB tokenisation (Stanford's Java tokenizer), then BLEU-1..4, METEOR, ROUGE-L, CIDEr (the
toolkit's ``Cider`` is CIDEr-D: clipped, with the length penalty) and SPICE when its models
are present. Without Java, a Python tokenizer that gives the same tokens on ordinary captions
replaces PTB, METEOR is skipped, and ``Scores.notes`` says so.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# The punctuation tokens the COCO toolkit removes after PTB tokenisation.
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                ".", "?", "!", ",", ":", "-", "--", "...", ";"}


@dataclass
class Scores:
    corpus: dict[str, float]                                   # metric -> corpus score
    per_image: dict[str, dict[str, float]]                     # image id -> {bleu_4, cider, ...}
    notes: list[str] = field(default_factory=list)             # skipped metrics and why


_java_ok: bool | None = None


def java_available() -> bool:
    global _java_ok
    if _java_ok is None:
        try:
            _java_ok = shutil.which("java") is not None and subprocess.run(
                ["java", "-version"], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _java_ok = False
    return _java_ok


# PTB-style rules for the fallback: split off punctuation and English clitics the way
# Stanford's PTBTokenizer does for caption-like text ("dog's" -> "dog 's", "don't" -> "do n't").
_CLITICS = re.compile(r"(?i)\b(\w+)(n't)\b|(\w)('s|'re|'ve|'ll|'d|'m)\b")
_PUNCT_SPLIT = re.compile(r"(\.\.\.|--|[.,!?;:()\[\]{}\"`]|'(?!(?:s|re|ve|ll|d|m|t)\b))")


_BRACKETS_AND_QUOTES = {'"', "(", ")", "[", "]", "{", "}"}


def _split_clitic(m: re.Match) -> str:
    """``_CLITICS`` match -> the word and its clitic, apart ("don't" -> "do n't")."""
    return f"{m.group(1)} {m.group(2)}" if m.group(1) else f"{m.group(3)} {m.group(4)}"


def python_tokenize(caption: str) -> str:
    """Pure-Python stand-in for PTB tokenisation + the toolkit's punctuation removal."""
    text = caption.replace("\n", " ").lower()
    text = _CLITICS.sub(_split_clitic, text)
    text = _PUNCT_SPLIT.sub(r" \1 ", text)
    # A hyphen inside a word stays ("t-shirt"); a standalone one is punctuation.
    words = [w for w in text.split() if w not in PUNCTUATIONS and w not in _BRACKETS_AND_QUOTES]
    return " ".join(words)


def tokenize(captions: dict[str, list[str]], use_java: bool) -> dict[str, list[str]]:
    """{id: [caption, ...]} -> {id: [tokenised caption, ...]}; empty captions stay empty."""
    if not use_java:
        return {k: [python_tokenize(c) for c in v] for k, v in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # Stanford's tokenizer drops empty lines, which would misalign the output: keep empty
    # captions out of it and put them back as "".
    nonempty = {k: [{"caption": c} for c in v if c.strip()] for k, v in captions.items()}
    nonempty = {k: v for k, v in nonempty.items() if v}
    with contextlib.redirect_stdout(io.StringIO()), _quiet_stderr():   # Java prints a speed line
        done = PTBTokenizer().tokenize(nonempty) if nonempty else {}
    out = {}
    for k, v in captions.items():
        it = iter(done.get(k, []))
        out[k] = [next(it) if c.strip() else "" for c in v]
    return out


@contextlib.contextmanager
def _quiet_stderr():
    """Silence a child process's stderr (file descriptor 2, not just sys.stderr)."""
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):       # no real fd 2 (some test runners): nothing to silence
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _spice_ready() -> str | None:
    """None when SPICE can run, else why not."""
    import pycocoevalcap.spice as spice

    lib = Path(spice.__file__).parent / "lib"
    if not java_available():
        return "SPICE skipped: it needs Java"
    if not (lib / "stanford-corenlp-3.6.0-models.jar").exists():
        return (f"SPICE skipped: it needs Stanford CoreNLP 3.6.0 models in {lib} (pycocoevalcap "
                f"downloads them on first use; "
                f"run `python -m pycocoevalcap.spice.get_stanford_models` once "
                f"with network access)")
    return None


def score(references: dict[str, list[str]], predictions: dict[str, str], spice: bool = False,
          use_java: bool | None = None, meteor: bool = True) -> Scores:
    """Corpus and per-image scores for ``predictions`` against ``references`` (same keys)."""
    if set(references) != set(predictions):
        raise ValueError(f"references and predictions must cover the same images. "
                         f"Received: {len(references)} references, "
                         f"{len(predictions)} predictions")
    if not references:
        raise ValueError("Nothing to score: no images.")
    ids = sorted(references)
    java = java_available() if use_java is None else use_java
    notes = [] if java else ["Java not found: PTB tokenisation replaced by the Python tokenizer, "
                             "METEOR skipped (install a JRE, "
                             "e.g. apt-get install default-jre-headless)"]
    # One tokenizer call for references and predictions (Java starts once: ~0.3 s a call); it
    # tokenises line by line, so each caption's tokens are what a call of its own gives.
    both = tokenize({**{("ref", i): list(references[i]) for i in ids},
                     **{("pred", i): [predictions[i]] for i in ids}}, java)
    gts = {i: both[("ref", i)] for i in ids}
    res = {i: both[("pred", i)] for i in ids}

    out = Scores({}, {i: {} for i in ids}, notes)
    _add_bleu(out, ids, gts, res)
    if java and meteor:
        _add_meteor(out, ids, gts, res)
    _add_rouge_and_cider(out, ids, gts, res)
    if spice:
        _add_spice(out, ids, gts, res)
    return out


# Each _add_* scores the tokenised ``res`` (id -> [prediction]) against ``gts`` (id -> references)
# and records the results in ``out``: corpus scores, per-image scores (in ``ids`` order), notes.
def _add_bleu(out: Scores, ids: list[str], gts: dict, res: dict) -> None:
    from pycocoevalcap.bleu.bleu import Bleu

    with contextlib.redirect_stdout(io.StringIO()):     # the toolkit prints its internals
        bleu, bleu_imgs = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out.corpus[f"bleu_{n + 1}"] = float(bleu[n])
    for i, s in zip(ids, bleu_imgs[3], strict=True):
        out.per_image[i]["bleu_4"] = float(s)


_METEOR = None      # one METEOR Java process per Python process (see _meteor)


def _meteor():
    """The process's METEOR scorer, started on first use and kept: its Java process spends
    about 10 s loading the paraphrase tables before the first score and milliseconds per call
    after, so a run that scores val and test, a sweep in one process and eval.py pay it once
    (pycocoevalcap starts one process per ``Meteor()``)."""
    global _METEOR
    from pycocoevalcap.meteor.meteor import Meteor

    if _METEOR is None or _METEOR.meteor_p.poll() is not None:
        _METEOR = Meteor()
    return _METEOR


def _drop_meteor() -> None:
    """After a failed score: stop the Java process (its lock may be held, so not via
    ``Meteor.__del__``) and forget it; the next score starts a fresh one."""
    global _METEOR
    import threading

    if _METEOR is not None:
        _METEOR.meteor_p.kill()
        _METEOR.lock = threading.Lock()     # __del__ acquires it when the object goes
        _METEOR = None


def _add_meteor(out: Scores, ids: list[str], gts: dict, res: dict) -> None:
    meteor = _meteor()
    try:
        # METEOR's Java process chokes on empty hypotheses; they score 0 by definition.
        nonempty = [i for i in ids if res[i][0].strip()]
        m, m_imgs = (meteor.compute_score({i: gts[i] for i in nonempty},
                                          {i: res[i] for i in nonempty})
                     if nonempty else (0.0, []))
        m_of = dict(zip(nonempty, m_imgs, strict=True))
        if len(nonempty) == len(ids):
            out.corpus["meteor"] = float(m)           # the toolkit's own corpus aggregate
        else:
            out.corpus["meteor"] = float(sum(m_of.values()) / len(ids))
            out.notes.append(f"METEOR: {len(ids) - len(nonempty)} empty prediction(s) scored 0; "
                             f"corpus METEOR is the mean of per-image scores")
        for i in ids:
            out.per_image[i]["meteor"] = float(m_of.get(i, 0.0))
    except BaseException:
        _drop_meteor()
        raise


def _add_rouge_and_cider(out: Scores, ids: list[str], gts: dict, res: dict) -> None:
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    rouge, rouge_imgs = Rouge().compute_score(gts, res)
    out.corpus["rouge_l"] = float(rouge)
    cider, cider_imgs = Cider().compute_score(gts, res)
    out.corpus["cider"] = float(cider)
    for i, r, c in zip(ids, rouge_imgs, cider_imgs, strict=True):
        out.per_image[i]["rouge_l"], out.per_image[i]["cider"] = float(r), float(c)


def _add_spice(out: Scores, ids: list[str], gts: dict, res: dict) -> None:
    why = _spice_ready()
    if why:
        out.notes.append(why)
        return
    from pycocoevalcap.spice.spice import Spice

    s, s_imgs = Spice().compute_score(gts, res)
    out.corpus["spice"] = float(s)
    for i, si in zip(ids, s_imgs, strict=True):
        out.per_image[i]["spice"] = float(si["All"]["f"])
