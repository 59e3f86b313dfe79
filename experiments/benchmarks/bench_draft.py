"""DRaFT's cost on the digits UNet (``task=digits_diffusion``'s architecture, random weights: the cost does
not depend on them): one DRaFT-K update (sample, reward, backward through the last K steps, Adam step on
the LoRA parameters) against one plain no-grad sampling pass of the same batch; and the memory of full
DRaFT's backward with and without per-UNet-call checkpointing as the number of steps grows.

Memory: the bytes autograd saves for the backward pass (``saved_tensors_hooks``, on any device), and on
CUDA the peak allocated memory of the update. Run alone: ``python -m experiments.benchmarks.run --only draft``.
"""

from __future__ import annotations

import statistics
import time

import torch


def _setup(device: str, steps: int):
    from metaopt.diffusion import DDIMChain, add_lora, denoiser
    from metaopt.tasks.diffusion import DigitsDiffusion

    task = DigitsDiffusion(num_inference_steps=steps, device=device)
    torch.manual_seed(0)
    unet = task.build_unet().to(device).eval().requires_grad_(False)
    params = add_lora(unet)
    return task, unet, params, DDIMChain.from_scheduler(task.scheduler()), denoiser(unet)


def _reward(images):
    return -(images - images.flip(-1)).pow(2).flatten(1).mean(1)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, device: str, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _saved_bytes(fn) -> int:
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def run(quick: bool = False, devices=("cpu", "cuda")) -> list[dict]:
    available = [d for d in devices if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small UNet: more threads only add synchronisation on a shared machine
    try:
        return _tables(available, quick)
    finally:
        torch.set_num_threads(threads)


def _tables(available: list[str], quick: bool) -> list[dict]:
    from metaopt.diffusion import draft_sample, sample

    repeats = 3 if quick else 7
    speed_rows, memory_rows = [], []
    for device in available:
        batch = 16 if device == "cpu" else 256
        task, unet, params, chain, eps = _setup(device, 10)
        optimizer = torch.optim.Adam(params, lr=1e-3)
        noise = torch.randn(batch, *task.image_shape, device=device)

        def plain(eps=eps, chain=chain, noise=noise):
            return sample(eps, chain, noise)

        plain_ms = _median_ms(plain, device, repeats)
        for truncation in (1, 5, None):
            def update(truncation=truncation, eps=eps, chain=chain, noise=noise, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                (-_reward(draft_sample(eps, chain, noise, truncation)).mean()).backward()
                optimizer.step()

            ms = _median_ms(update, device, repeats)
            name = "full DRaFT (K=10)" if truncation is None else f"DRaFT-K, K={truncation}"
            speed_rows.append([device, batch, name, ms, plain_ms, ms / plain_ms])

        for steps in ((5, 10) if quick else (5, 10, 20, 40)):
            task, unet, params, chain, eps = _setup(device, steps)
            noise = torch.randn(batch, *task.image_shape, device=device)
            row = [device, batch, steps]
            for checkpoint in (False, True):
                def backward(checkpoint=checkpoint, eps=eps, chain=chain, noise=noise):
                    (-_reward(draft_sample(eps, chain, noise, None, checkpoint)).mean()).backward()

                saved = _saved_bytes(backward)
                peak = float("nan")
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    backward()
                    torch.cuda.synchronize()
                    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
                for p in params:
                    p.grad = None
                row += [saved / 2 ** 20, peak]
            memory_rows.append(row + [row[3] / row[5]])
    return [
        {"title": "One DRaFT-K update vs one plain sampling pass (digits UNet, 10 DDIM steps, LoRA rank 4)",
         "columns": ["device", "batch", "update", "update ms", "plain sampling ms", "update / sampling"],
         "rows": speed_rows,
         "notes": "Median of repeated runs after a warm-up. An update samples the whole chain (T−K steps without "
                  "gradients), scores the batch, backpropagates through K checkpointed UNet calls (each "
                  "recomputed once) and steps Adam on the LoRA parameters. CPU: one torch thread."},
        {"title": "Full DRaFT's backward memory, with and without per-UNet-call checkpointing",
         "columns": ["device", "batch", "DDIM steps", "saved MiB (no ckpt)", "peak MiB (no ckpt)",
                     "saved MiB (ckpt)", "peak MiB (ckpt)", "saved: no ckpt / ckpt"],
         "rows": memory_rows,
         "notes": "saved: bytes autograd keeps for the backward pass (saved_tensors_hooks); with checkpointing the "
                  "UNet calls' activations are dropped and recomputed one call at a time in the backward pass (its "
                  "peak adds one call's activations, about the no-checkpoint figure divided by the steps), and "
                  "what stays grows by a few KiB per step (the DDIM updates' tensors; the checkpoints' own inputs, "
                  "one x per step, are not seen by the hook). peak: CUDA max_memory_allocated above the model "
                  "(nan on CPU)."},
    ]


if __name__ == "__main__":
    for table in run(quick=True, devices=("cpu",)):
        print(table)
