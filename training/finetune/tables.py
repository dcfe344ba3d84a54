"""Render var/finetune/*.json into markdown tables: python training/finetune/tables.py"""

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "var" / "finetune"
SETS = ("qqp", "mqp", "comqa", "mqp+comqa", "overall")


def rows(label: str, t: dict) -> list[str]:
    return [
        f"| {label} | {k} | {t[k]['n']} | {t[k]['auc']:.3f} | {t[k]['r@p0.9']:.3f} | "
        f"{t[k]['r@p0.95']:.3f} | {t[k]['r@p0.99']:.3f} |"
        for k in SETS
    ]


def main() -> None:
    head = [
        "| model | set | n | AUC | R@P0.90 | R@P0.95 | R@P0.99 |",
        "|---|---|---|---|---|---|---|",
    ]
    lines = ["### Held-out (30% of question groups)", "", *head]
    for name, f in (
        ("repo int8 (service)", "eval-repo-int8.json"),
        ("base fp32", "eval-base.json"),
        ("fine-tuned occ fp32", "eval-occ.json"),
        ("fine-tuned cosent fp32", "eval-cosent.json"),
    ):
        if (OUT / f).exists():
            lines += rows(name, json.loads((OUT / f).read_text())["held_out"])
    for f in sorted(OUT.glob("export-*.json")):
        r = json.loads(f.read_text())
        lines += rows(f"{r['name']} ONNX fp32", r["fp32_onnx_held_out"])
        lines += rows(f"{r['name']} ONNX int8", r["int8_held_out"])
    lines += ["", "### Validation (15% of training groups; used for epoch selection)", "", *head]
    for name, f in (
        ("base fp32", "eval-base.json"),
        ("fine-tuned occ", "eval-occ.json"),
        ("fine-tuned cosent", "eval-cosent.json"),
    ):
        if (OUT / f).exists():
            lines += rows(name, json.loads((OUT / f).read_text())["val"])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
