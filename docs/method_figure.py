"""Draw docs/method.svg: one step of Critique-GRPO on one slide, for docs/course.md.

    python docs/method_figure.py                 # writes docs/method.svg
    python docs/method_figure.py OUT.svg         # writes elsewhere (tests/test_course.py does)

Left, the eight steps of train.py's loop with a worked group (7 wrong answers and 1 correct
refinement: A = -0.125 and +0.875, loss.group_advantages' numbers); right, the gradient weight a
token gets from the loss, d loss / d log p over -A: 1 for sampled answers, gamma p / (p + gamma)^2
for refinement tokens (computed here from the formula; docs/algorithm.md has it from
loss.shaping), and the "unshaped x 0.1" control of exercise 8. No network, no randomness: the SVG
is byte-identical for the same matplotlib (its version is in the file's metadata), text kept as
text (svg.fonttype none) so that a slide can restyle it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "method.svg"
GAMMA = 0.1
BLUE, ORANGE, GREY, RED, GREEN = "#1f5fa8", "#d9771e", "#555555", "#b8322a", "#2e8b3e"

# (x, y, width, height, title, detail, colour): the loop of train.py, top to bottom
STEPS = [
    (0.02, 0.83, 0.44, 0.12, "1. Sample", "n answers per question from $\\pi_\\theta(\\cdot|q)$",
     BLUE),
    (0.54, 0.83, 0.44, 0.12, "2. Verify", "reward r = 1 if the final answer is right, else 0",
     BLUE),
    (0.54, 0.63, 0.44, 0.12, "3. Critique", "groups whose answers are all wrong:\n"
     "\"incorrect, the ground truth is 17\"", ORANGE),
    (0.02, 0.63, 0.44, 0.12, "4. Refine", "the same policy answers again with\n"
     "question + its answer + critique", ORANGE),
    (0.02, 0.43, 0.96, 0.12, "5. Select and mix", "k = 1 refinement (a correct one first) joins "
     "the group, trained as an answer\nto the BARE question: off-policy (no PPO ratio)", ORANGE),
    (0.02, 0.02, 0.44, 0.14, "7. Loss per token", "sampled answer: $-A\\cdot$ratio (PPO clip)\n"
     "refinement: $-A\\,f(p)$, $f(p) = p/(p+\\gamma)$", BLUE),
    (0.54, 0.02, 0.44, 0.14, "8. Optimise", "sum over tokens / a constant,\n"
     "clip the gradient norm, AdamW step", BLUE),
]
ARROWS = [((0.46, 0.89), (0.54, 0.89)), ((0.76, 0.83), (0.76, 0.75)),
          ((0.54, 0.69), (0.46, 0.69)), ((0.24, 0.63), (0.24, 0.55)),
          ((0.50, 0.43), (0.50, 0.37)), ((0.24, 0.20), (0.24, 0.16)),
          ((0.46, 0.09), (0.54, 0.09))]


def box(ax, x, y, w, h, title, detail, colour):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.005,rounding_size=0.015",
                                facecolor="white", edgecolor=colour, linewidth=1.6))
    ax.text(x + 0.015, y + h - 0.025, title, color=colour, fontsize=10.5, fontweight="bold",
            va="top")
    ax.text(x + 0.015, y + h - 0.058, detail, color="black", fontsize=8.5, va="top",
            linespacing=1.3)


def group_panel(ax):
    """Step 6 with the worked group: 7 wrong answers and 1 correct refinement."""
    ax.add_patch(FancyBboxPatch((0.02, 0.21), 0.96, 0.16,
                                boxstyle="round,pad=0.005,rounding_size=0.015",
                                facecolor="white", edgecolor=BLUE, linewidth=1.6))
    ax.text(0.035, 0.345, "6. Advantage", color=BLUE, fontsize=10.5, fontweight="bold", va="top")
    ax.text(0.035, 0.31, "$A = r - \\mathrm{mean}(r)$ over the group\n(all-equal group: A = 0, "
            "no gradient)", fontsize=8.5, va="top", linespacing=1.3)
    rewards = [0] * 7 + [1]
    mean = sum(rewards) / len(rewards)
    for i, r in enumerate(rewards):
        x = 0.42 + i * 0.068
        refinement = i == 7
        ax.add_patch(FancyBboxPatch((x, 0.25), 0.058, 0.085,
                                    boxstyle="round,pad=0.002,rounding_size=0.008",
                                    facecolor=GREEN if r else "#f3d3d0",
                                    edgecolor=ORANGE if refinement else GREY,
                                    linewidth=2.0 if refinement else 0.8))
        ax.text(x + 0.029, 0.305, "ref." if refinement else f"ans {i + 1}", fontsize=7,
                ha="center", va="center", color="white" if r else "black")
        ax.text(x + 0.029, 0.27, f"{r - mean:+.3f}", fontsize=7.5, ha="center", va="center",
                color="white" if r else RED)
    ax.text(0.42, 0.355, "before mixing: 7 wrong answers, every A = 0;  after: r = 0,...,0, 1",
            fontsize=7.5, color=GREY, va="center")


def weight_panel(ax):
    """d loss / d log p over -A, per token probability p."""
    ps = [10 ** (-5 + 5 * i / 400) for i in range(401)]
    shaped = [GAMMA * p / (p + GAMMA) ** 2 for p in ps]
    ax.plot(ps, [1.0] * len(ps), color=BLUE, linewidth=2,
            label="sampled answer, or refinement unshaped ($-A\\log p$)")
    ax.plot(ps, [0.1] * len(ps), color=GREY, linewidth=1.5, linestyle="--",
            label="unshaped $\\times$ 0.1 (exercise 8's control)")
    ax.plot(ps, shaped, color=ORANGE, linewidth=2.2,
            label="refinement, shaped: $\\gamma p/(p+\\gamma)^2$, $\\gamma$ = 0.1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 3)
    ax.set_xlim(1e-5, 1)
    ax.set_xlabel("p: the token's probability under the bare question", fontsize=9)
    ax.set_ylabel("gradient weight of the token's log p (per unit A)", fontsize=9)
    ax.set_title("How hard one token is pushed", fontsize=11, loc="left")
    ax.annotate("max 0.25 at p = $\\gamma$", (GAMMA, 0.25), (0.004, 0.6), fontsize=8,
                arrowprops=dict(arrowstyle="->", color=GREY))
    ax.annotate("0.083 at p = 1", (1.0, 0.0826), (0.05, 0.02), fontsize=8,
                arrowprops=dict(arrowstyle="->", color=GREY))
    ax.annotate("rare tokens damped:\n0.0098 at p = 0.001", (1e-3, 0.0098), (1.2e-5, 2.5e-4),
                fontsize=8, arrowprops=dict(arrowstyle="->", color=GREY))
    ax.legend(loc="lower right", fontsize=7.5, frameon=False)
    ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
    ax.tick_params(labelsize=8)


def draw(out: Path = OUT) -> Path:
    plt.rcParams.update({"svg.hashsalt": "critique-grpo-method", "svg.fonttype": "none",
                         "font.family": "DejaVu Sans"})
    fig = plt.figure(figsize=(13, 6.2))
    left = fig.add_axes([0.01, 0.02, 0.55, 0.9])
    left.set_axis_off()
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    for step in STEPS:
        box(left, *step)
    group_panel(left)
    for a, b in ARROWS:
        left.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color=GREY,
                                       linewidth=1.2))
    fig.text(0.015, 0.96, "Critique-GRPO: one training step", fontsize=14, fontweight="bold")
    fig.text(0.015, 0.925, "blue: GRPO;  orange: what Critique-GRPO adds", fontsize=9,
             color=GREY)
    weight_panel(fig.add_axes([0.63, 0.1, 0.35, 0.78]))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="svg", metadata={
        "Date": None, "Creator": f"docs/method_figure.py, matplotlib {matplotlib.__version__}"})
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(f"wrote {draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)}")
