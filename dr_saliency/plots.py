"""Figures. Each function takes data and returns a matplotlib Figure; none calls plt.show().

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), so they work on
headless servers and never accumulate open windows; save them with ``fig.savefig(path)``.
Colours: the Okabe-Ito colour-blind-safe palette for lines, viridis/magma for maps.
"""

import numpy as np
from matplotlib.figure import Figure

#: Okabe & Ito (2008) colour-blind-safe palette.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8}


def _figure(width, height):
    import matplotlib

    matplotlib.rcParams.update(STYLE)
    return Figure(figsize=(width, height), layout="constrained")


def training_curves(log):
    """Loss, validation kappa/AUC and learning rate per epoch.

    Args:
        log: dict column -> list of float per epoch, as ``train.read_log`` returns (columns
            ``epoch``, ``loss``, ``val_mse``, ``val_kappa``, ``val_auc``, ``val_accuracy``,
            ``lr``; missing ones are left out).

    Returns:
        matplotlib Figure with three panels.
    """
    epochs = np.asarray(log.get("epoch", range(len(log.get("loss", [])))), float) + 1
    fig = _figure(9, 2.8)
    ax_loss, ax_score, ax_lr = fig.subplots(1, 3)
    for key, label, colour in (("loss", "train loss (MSE)", OKABE_ITO[0]),
                               ("val_mse", "validation MSE", OKABE_ITO[1])):
        if key in log:
            ax_loss.plot(epochs, log[key], label=label, color=colour)
    ax_loss.set(xlabel="epoch", ylabel="mean squared error", title="Loss")
    ax_loss.legend()
    for key, label, colour in (("val_kappa", "quadratic kappa", OKABE_ITO[2]),
                               ("val_auc", "referable AUC", OKABE_ITO[3]),
                               ("val_accuracy", "accuracy", OKABE_ITO[4])):
        if key in log:
            ax_score.plot(epochs, log[key], label=label, color=colour)
    ax_score.set(xlabel="epoch", ylabel="validation score", ylim=(0, 1), title="Validation")
    ax_score.legend(loc="lower right")
    if "lr" in log:
        ax_lr.plot(epochs, log["lr"], color=OKABE_ITO[7])
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="Schedule")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return fig


def roc_figure(fpr, tpr, auc, auc_ci=None, title="Referable DR (stage >= 2)"):
    """ROC curve of a referable-DR score.

    Args:
        fpr, tpr: 1-D sequences of the curve.
        auc: float; auc_ci: optional (low, high) 95% interval.
        title: str.

    Returns:
        matplotlib Figure.
    """
    fig = _figure(3.4, 3.2)
    ax = fig.subplots()
    label = f"AUC {auc:.3f}"
    if auc_ci is not None and np.all(np.isfinite(auc_ci)):
        label += f" (95% CI {auc_ci[0]:.3f}-{auc_ci[1]:.3f})"
    ax.plot(fpr, tpr, color=OKABE_ITO[0], label=label)
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    return fig


def confusion_figure(confusion, title="Grades"):
    """Confusion matrix of true stage (rows) against predicted grade (columns), with counts.

    Args:
        confusion: (5, 5) array-like of counts.
        title: str.

    Returns:
        matplotlib Figure.
    """
    confusion = np.asarray(confusion)
    fig = _figure(3.6, 3.2)
    ax = fig.subplots()
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, float), where=rows > 0)
    im = ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, str(count), ha="center", va="center",
                color="black" if share[i, j] > 0.6 else "white")
    ticks = range(confusion.shape[0])
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted grade", ylabel="true stage", title=title)
    fig.colorbar(im, ax=ax, label="share of true stage", shrink=0.8)
    return fig
