"""Write a run's curve (training losses every 50 steps, validation every 1000) from its
train.log as the TSV committed beside the slim checkpoint. A step logged twice (a resumed run
repeats the steps since its last checkpoint) keeps its last line.

`--prev TSV` keeps the rows of an earlier curve (this script's own output) for steps the log
does not have: a run resumed on a new machine from the slim checkpoint starts a new train.log,
and the committed curve must still hold the whole run.

Usage (from models/):
  python -m aic_speech.curve --log $HOME/aic-train-v2/train.log \
      --out checkpoints/aic-speech-v2.curve.tsv --title "aic-speech-v2 stage two ..."
"""
from __future__ import annotations

import argparse


def parse(lines):
    train, valid = {}, {}
    for line in lines:
        f = line.split()
        if len(f) > 3 and f[1] == "valid" and f[2] == "step":
            kv = dict(zip(f[4::2], f[5::2]))
            valid[int(f[3])] = kv
        elif len(f) > 3 and f[1] == "step" and f[2].isdigit():
            kv = dict(zip(f[3::2], f[4::2]))
            if "lr" in kv:
                train[int(f[2])] = kv
    return train, valid


def read_tsv(path, tcols, vcols):
    """Rows of an earlier curve TSV, as `parse` returns them."""
    train, valid = {}, {}
    section, cols = None, None
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            f = line.split("\t")
            if f[0] == "step":
                section = valid if section is train else train
                cols = [c.replace("s_per_step", "s/step") for c in f[1:]]
                continue
            if section is None or not f[0].isdigit():
                continue
            section[int(f[0])] = {c: v for c, v in zip(cols, f[1:]) if v != ""}
    return train, valid


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="training losses (means over 50 steps), from train.log")
    ap.add_argument("--prev", help="an earlier curve TSV whose rows are kept where the log has none")
    a = ap.parse_args(argv)
    with open(a.log) as fh:
        train, valid = parse(fh)
    tcols = ["lr", "mel", "sc", "logmag", "complex", "wave", "d", "adv", "fm", "loss", "commit",
             "gnorm", "s/step"]
    vcols = ["mel@12", "stoi@12", "mel@2", "stoi@2"]
    if a.prev:
        ptrain, pvalid = read_tsv(a.prev, tcols, vcols)
        train = {**ptrain, **train}
        valid = {**pvalid, **valid}
    with open(a.out, "w") as out:
        out.write(f"# {a.title}\n")
        out.write("step\t" + "\t".join(c.replace("s/step", "s_per_step") for c in tcols) + "\n")
        for s in sorted(train):
            out.write(f"{s}\t" + "\t".join(train[s].get(c, "") for c in tcols) + "\n")
        out.write("\n# validation (20 clips of the corpus valid split; the trainer's own check)\n")
        out.write("step\t" + "\t".join(vcols) + "\n")
        for s in sorted(valid):
            out.write(f"{s}\t" + "\t".join(valid[s].get(c, "") for c in vcols) + "\n")
    print(f"{a.out}: {len(train)} training rows, {len(valid)} validation rows")


if __name__ == "__main__":
    main()
