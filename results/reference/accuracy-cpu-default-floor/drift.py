"""reference vs native BatchNorm from the same seed: how far apart the weights drift, step by step."""
import torch, torch.nn.functional as F
import normbench.cli  # noqa: F401  (this checkout's conf)
from hydra import compose, initialize_config_module
from normbench import data as datasets, models, norms
torch.set_num_threads(1)
with initialize_config_module("normbench.conf", version_base="1.3"):
    cfg = compose("accuracy", ["norm=bn", "device=cpu"])
data = datasets.load(cfg.dataset, "cpu")
x = data.x_train[:64]
for k in (64,):
    a = norms.build("bn", 32, impl="reference"); b = norms.build("bn", 32, impl="native")
    h = torch.randn(64, 32, 40, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    print("one bn forward, reference vs native, max |diff|:", (a(h) - b(h)).abs().max().item(),
          "rel to max |y|:", ((a(h) - b(h)).abs().max() / b(h).abs().max()).item())
nets = {}
for impl in ("reference", "native"):
    torch.manual_seed(0)
    nets[impl] = models.from_config(cfg.model, input_shape=tuple(data.x_train.shape[1:]), num_classes=10,
                                    norm=lambda c, impl=impl: norms.build("bn", c, impl=impl))
opts = {i: torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4) for i, n in nets.items()}
gen = torch.Generator().manual_seed(0)
step = 0
for epoch in range(5):
    order = torch.randperm(data.x_train.shape[0], generator=gen)
    for s in range(0, data.x_train.shape[0] - 63, 64):
        idx = order[s:s + 64]
        for i, n in nets.items():
            n.train(); loss = F.cross_entropy(n(data.x_train[idx]), data.y_train[idx])
            opts[i].zero_grad(); loss.backward(); opts[i].step()
        step += 1
        if step in (1, 10, 30, 100, 310):
            diff = max((p - q).abs().max().item() for p, q in zip(nets["reference"].parameters(), nets["native"].parameters()))
            scale = max(q.abs().max().item() for q in nets["native"].parameters())
            with torch.no_grad():
                for n in nets.values(): n.eval()
                pred = {i: n(data.x_test).argmax(1) for i, n in nets.items()}
            print(f"step {step}: max |w_ref - w_native| = {diff:.3g} (largest |w| {scale:.3g}); test predictions that differ: {(pred['reference'] != pred['native']).sum().item()} of {len(data.y_test)}")
