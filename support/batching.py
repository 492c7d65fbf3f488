"""The update's batch layout: sequences packed with each distinct prompt once, micro-batches under
a token budget, and the rows of one micro-batch on a device. Machinery of steps 7-8, not the
method: how the log-probs are batched never changes the loss (tests/test_rollout.py)."""
from __future__ import annotations

import torch


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
         R: int | None = None) -> dict:
    """The update's batch, each distinct prompt once (a group's samples and its refinement share
    one).

    prompt_ids / prompt_mask (U, P): the distinct prompts, left-padded; prompt_index (N,): each
    sequence's prompt row; response_ids / response_mask (N, R): responses right-padded (the mask
    counts the final EOS).
    """
    N = len(prompts)
    assert N == len(responses) and N > 0
    rows: dict[tuple, int] = {}
    prompt_index = torch.tensor([rows.setdefault(tuple(p), len(rows)) for p in prompts])
    P = max(len(p) for p in rows)
    R = R or max(max(len(r) for r in responses), 2)  # >= 2 columns: see `select`
    prompt_ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(rows), P), dtype=torch.long)
    for p, u in rows.items():
        prompt_ids[u, P - len(p):] = torch.tensor(p, dtype=torch.long)
        prompt_mask[u, P - len(p):] = 1
    response_ids = torch.full((N, R), pad_id, dtype=torch.long)
    response_mask = torch.zeros((N, R), dtype=torch.long)
    for i, r in enumerate(responses):
        assert len(r) <= R
        response_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        response_mask[i, : len(r)] = 1
    return dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, prompt_index=prompt_index,
                response_ids=response_ids, response_mask=response_mask)


def select(batch: dict, idx: list[int], device="cpu") -> dict:
    """Sequences `idx` of a packed batch, with only the prompts they use, on `device`. Columns that
    are padding in every row are cut: leading prompt columns, trailing response columns, keeping two
    at least: then every forward runs the prompt pass and the response pass (engines that gather
    weights per module call, ZeRO-3 and FSDP, need every process to call the same modules as
    often)."""
    used, prompt_index = torch.unique(batch["prompt_index"][idx], return_inverse=True)
    pm, rm = batch["prompt_mask"][used], batch["response_mask"][idx]
    first = int(pm.any(0).nonzero()[0])
    r = min(max(int(rm.sum(1).max()), 2), rm.shape[1])
    return dict(prompt_ids=batch["prompt_ids"][used, first:].to(device),
                prompt_mask=pm[:, first:].to(device), prompt_index=prompt_index.to(device),
                response_ids=batch["response_ids"][idx, :r].to(device),
                response_mask=rm[:, :r].to(device))


def micro_batches(batch: dict, seqs: list[int], token_budget: int) -> list[list[int]]:
    """Split the sequences `seqs` of a packed batch into micro-batches of at most `token_budget`
    padded tokens as `select` lays them out: distinct prompts x longest prompt + rows x longest
    response. Longest response first, which keeps the padding small (and a group's members mostly
    together, so they share their prompt). A sequence longer than the budget goes alone."""
    prompt = batch["prompt_index"].tolist()
    plen, rlen = batch["prompt_mask"].sum(1).tolist(), batch["response_mask"].sum(1).tolist()
    out: list[list[int]] = []
    for i in sorted(seqs, key=lambda i: (-rlen[i], -plen[prompt[i]])):
        mb = (out[-1] if out else []) + [i]
        cost = (len({prompt[j] for j in mb}) * max(plen[prompt[j]] for j in mb)
                + len(mb) * max(rlen[j] for j in mb))
        if len(mb) > 1 and cost <= token_budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


