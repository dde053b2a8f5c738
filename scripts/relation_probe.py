"""Where is a spatial relation lost? Linear probes at each stage of a base (issue 23, section 4).

On freshly drawn two-group scenes (one shape each, a seed of its own), fit a logistic regression
that reads the relation (left of / right of / above / below, chance 0.25) from
  1. the tower's map (every position, flattened),
  2. the projector's image tokens (flattened; as a set, mean and max; and the two tokens most like
     the groups' shape words, side by side: what attention could fetch),
  3. the language model's last hidden state at the answer position of "where are the <a> ?",
and compare with what the model answers itself (its yes/no check of the true against the swapped
relation). A probe that reads the relation where the answer does not says the information is
there and a later stage does not use it.

    .venv/bin/python scripts/relation_probe.py models/base/fastvlm_gemma [--styles classic]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenfocus.env import apply_env  # noqa: E402

apply_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

from tokenfocus.backbones import template_parts  # noqa: E402
from tokenfocus.config import load_params  # noqa: E402
from tokenfocus.env import torch_threads  # noqa: E402
from tokenfocus.pretrain.curriculum import fresh_scene  # noqa: E402
from tokenfocus.pretrain.parts import part, pixel_values  # noqa: E402
from tokenfocus.render import RELATIONS, SHAPES, pick_style, render  # noqa: E402
from tokenfocus.scoring import Scorer, encode  # noqa: E402
from tokenfocus.synth import plural  # noqa: E402

REL = list(RELATIONS)


def scenes(n: int, seed: int):
    """Two-group scenes, one large shape each, ordered so that group 0's shape comes first in
    SHAPES: the image alone then fixes the label (where group 0 is), as it must for the tower."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        s = fresh_scene(rng, 2)
        if len(s.groups) < 2:
            continue
        s.groups = sorted(s.groups[:2], key=lambda g: SHAPES.index(g.shape))
        s.relation = REL[len(out) % 4]
        for g in s.groups:
            g.count, g.size = 1, "large"
        out.append(s)
    return out, rng


@torch.inference_mode()
def features(scorer: Scorer, family: str, scs, images) -> dict[str, np.ndarray]:
    model, proc = scorer.model, scorer.processor
    tower, projector = part(model, family, "tower"), part(model, family, "projector")
    parts = template_parts(proc)
    got: dict[str, list] = {"tower": [], "projector": [], "projector_set": [], "retrieved": [], "lm": []}
    tok_ids = torch.tensor([proc.tokenizer.convert_tokens_to_ids(s) for s in SHAPES])
    words = torch.nn.functional.normalize(model.get_input_embeddings()(tok_ids).float(), dim=-1)
    cap = {}
    hook = projector.register_forward_hook(lambda m, i, o: cap.__setitem__("tok", o))
    for b in range(0, len(scs), 32):
        ims, ss = images[b : b + 32], scs[b : b + 32]
        m = tower(pixel_values(proc, ims)).last_hidden_state
        got["tower"].append(m.flatten(1).numpy())
        texts = [parts.head + f"where are the {plural(s.groups[0].shape, 2)} ?" + parts.tail for s in ss]
        out = model(**encode(proc, texts, ims), output_hidden_states=True)
        tok = cap["tok"]
        got["projector"].append(tok.reshape(len(ss), -1).numpy())
        # the tokens as a set (mean and max over them): all that content-based attention can read
        # when a token's features do not say where it sits
        tok = tok.reshape(len(ss), -1, tok.shape[-1])
        got["projector_set"].append(torch.cat([tok.mean(1), tok.amax(1)], -1).numpy())
        # what one attention step could fetch: the token most like each group's shape word (the
        # presence loss ties them), the two side by side
        sim = torch.einsum("btd,sd->bts", torch.nn.functional.normalize(tok.float(), dim=-1), words)
        pick = [
            torch.cat([tok[i, sim[i, :, SHAPES.index(g.shape)].argmax()] for g in s.groups[:2]])
            for i, s in enumerate(ss)
        ]
        got["retrieved"].append(torch.stack(pick).numpy())
        got["lm"].append(out.hidden_states[-1][:, -1, :].float().numpy())
    hook.remove()
    return {k: np.concatenate(v) for k, v in got.items()}


def probe(x: np.ndarray, y: np.ndarray, n_train: int, kind: str) -> float:
    """Held-out accuracy of a linear (logistic) or one-hidden-layer (mlp) probe."""
    clf = (
        LogisticRegression(max_iter=2000, C=1.0)
        if kind == "linear"
        else MLPClassifier((256,), max_iter=600, random_state=0, alpha=1e-3)
    )
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    clf.fit((x[:n_train] - mu) / sd, y[:n_train])
    return float(clf.score((x[n_train:] - mu) / sd, y[n_train:]))


@torch.inference_mode()
def answered(scorer: Scorer, scs, images) -> float:
    """The base's own check: P(yes) of the true relation above that of its opposite."""
    parts = template_parts(scorer.processor)
    tok = scorer.processor.tokenizer
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    margins = []
    for rel in (lambda s: s.relation, lambda s: RELATIONS[s.relation]):
        m = []
        for b in range(0, len(scs), 32):
            ss, ims = scs[b : b + 32], images[b : b + 32]
            texts = [
                parts.head
                + f"are the {plural(s.groups[0].shape, 2)} {rel(s)} the {plural(s.groups[1].shape, 2)} ?"
                + parts.tail
                for s in ss
            ]
            lg = scorer.model(**encode(scorer.processor, texts, ims), logits_to_keep=1).logits[:, -1, :]
            m += (lg[:, yes] - lg[:, no]).tolist()
        margins.append(m)
    return sum(t > s for t, s in zip(*margins, strict=True)) / len(scs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--n", type=int, default=1200)
    ap.add_argument("--styles", default="classic", help="comma-separated catalog styles to draw in")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch_threads(2)
    params = load_params()
    book = params.styles.book()
    styles = tuple(book.catalog[s] for s in a.styles.split(","))
    meta = json.loads((Path(a.base) / "tokenfocus.json").read_text())
    scorer = Scorer.load(a.base, params="params.yaml")
    scs, rng = scenes(a.n, seed=31)
    images = [render(s, 64, rng, pick_style(styles, rng)) for s in scs]
    y = np.array([REL.index(s.relation) for s in scs])
    f = features(scorer, meta["family"], scs, images)
    n_train = int(0.75 * a.n)
    res = {
        f"{k}_{kind}": round(probe(v, y, n_train, kind), 3)
        for k, v in f.items()
        for kind in ("linear", "mlp")
    }
    res["answer_true_over_swapped"] = round(answered(scorer, scs[n_train:], images[n_train:]), 3)
    res |= {"base": a.base, "styles": a.styles, "n": a.n, "chance_probe": 0.25, "chance_answer": 0.5}
    print(json.dumps(res))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
