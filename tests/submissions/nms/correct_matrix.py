# ruff: noqa: F821
# Correct but different: NMS over the full IoU matrix computed once (a NumPy loop over rows), box_convert
# through a 4x4 matrix, batched_nms with the categories renumbered 0..C-1 before the offset, float64
# Soft-NMS bookkeeping cast back. Cells of solutions/nms (see grading/submissions.py).
# %% box_area
def upcast(t: Tensor) -> Tensor:
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    if t.dtype in (torch.int8, torch.uint8, torch.int16):
        return t.int()
    return t


def box_area(boxes: Tensor) -> Tensor:
    b = upcast(boxes)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


# %% box_iou
def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    b1, b2 = upcast(boxes1), upcast(boxes2)
    w = (torch.minimum(b1[:, None, 2], b2[None, :, 2]) - torch.maximum(b1[:, None, 0], b2[None, :, 0])).clamp(min=0)
    h = (torch.minimum(b1[:, None, 3], b2[None, :, 3]) - torch.maximum(b1[:, None, 1], b2[None, :, 1])).clamp(min=0)
    inter = w * h
    return inter / (box_area(b1)[:, None] + box_area(b2)[None, :] - inter)


# %% box_convert
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
TO_XYXY = {
    "xyxy": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
    "xywh": [[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]],
    "cxcywh": [[1, 0, 1, 0], [0, 1, 0, 1], [-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5]],
}


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    if in_fmt not in TO_XYXY or out_fmt not in TO_XYXY:
        raise ValueError(f"unknown format {in_fmt!r} or {out_fmt!r}")
    if in_fmt == out_fmt:
        return boxes.clone()
    to_xyxy = torch.tensor(TO_XYXY[in_fmt], dtype=torch.float64)
    from_xyxy = torch.linalg.inv(torch.tensor(TO_XYXY[out_fmt], dtype=torch.float64))
    return (boxes.double() @ to_xyxy @ from_xyxy).to(boxes.dtype)


# %% nms
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    over = (box_iou(boxes[order], boxes[order]).double() > iou_threshold).numpy()
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if alive[i]:
            keep.append(i)
            alive[i + 1 :] &= ~over[i, i + 1 :]
    return order[torch.tensor(keep, dtype=torch.int64)]


# %% batched_nms
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64)
    rank = torch.unique(idxs, return_inverse=True)[1]  # categories renumbered 0..C-1
    span = boxes.max() - boxes.min() + 1
    return nms(boxes + (rank.to(boxes.dtype) * span)[:, None], scores, iou_threshold)


# %% soft_nms
def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
) -> tuple[Tensor, Tensor]:
    if method not in ("gaussian", "linear"):
        raise ValueError(method)
    iou = box_iou(boxes, boxes).nan_to_num(0.0)
    current = scores.clone()
    alive = current >= score_threshold
    keep, kept = [], []
    while bool(alive.any()):
        masked = torch.where(alive, current, torch.full_like(current, -float("inf")))
        best = int(torch.argmax(masked))
        keep.append(best)
        kept.append(current[best])
        alive[best] = False
        u = iou[best]
        decay = (
            torch.exp(-u * u / sigma)
            if method == "gaussian"
            else torch.where(u > iou_threshold, 1 - u, torch.ones_like(u))
        )
        current = torch.where(alive, current * decay.to(current.dtype), current)
        alive &= current >= score_threshold
    if not keep:
        return torch.zeros(0, dtype=torch.int64), scores.new_zeros(0)
    return torch.tensor(keep, dtype=torch.int64), torch.stack(kept)
