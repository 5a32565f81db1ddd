"""The reference definition of the model family: K coupling flows as one module.

Every model ``k`` has its own structure and parameters; all parameters of model ``k``
are row ``k`` of one ``[K, P]`` tensor, :attr:`CouplingFlows.theta`, laid out by the
spec's :class:`~flowsweep.model.spec.ParamLayout`, so the optimizer, the freezing of
diverged models and the gradient are one tensor each. A layer is an affine constant
transform and a coupling (affine or spline, :mod:`flowsweep.model.transforms`), in the
spec's order; in the ``generative`` direction the layers map latent to data and the density runs through their inverses. Autograd
differentiates it all; the native kernel (:mod:`flowsweep.native`) computes the same
numbers for the variants it covers, and the tests hold it to this module.

Model ``k`` only ever reads its own row: its outputs and gradients are the ones it
would have alone.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from flowsweep.model.spec import ModelSpec
from flowsweep.model.transforms import affine_constant, coupling
from flowsweep.structure import Structure

__all__ = ["CouplingFlows", "LOG_2PI"]

LOG_2PI = math.log(2.0 * math.pi)
def _fan_in_block(name: str) -> str:
    """A bias block is initialised with the fan-in of its weight block, as in ``nn.Linear``."""
    return name.replace("bias", "weight")


class CouplingFlows(nn.Module):
    """K flows of one :class:`ModelSpec`, each with its own :class:`Structure`.

    Arguments:
        spec: The model family member (``d``, ``m``, ``depth`` and the open choices).
        structures: One structure per model, each of the spec's shape.
        generators: One ``torch.Generator`` per model for its initial parameters;
            ``None`` uses the global generator.
    """

    def __init__(self, spec: ModelSpec, structures: Sequence[Structure],
                 generators: Optional[Sequence[torch.Generator]] = None):
        super().__init__()
        self.spec, self.layout = spec, spec.layout()
        self.k, self.d, self.m, self.depth = len(structures), spec.d, spec.m, spec.depth
        self.theta = nn.Parameter(torch.zeros(self.k, self.layout.numel))
        self.register_buffer("perm", torch.zeros(self.k, self.depth, self.d, dtype=torch.long))
        self.structures: list[Structure] = []
        self.set_structures(structures)
        for i in range(self.k):
            self.reset_parameters(i, None if generators is None else generators[i])

    # -- structure and parameters ----------------------------------------------------

    def params(self) -> dict[str, Tensor]:
        """Named views of :attr:`theta`, ``{block: [K, L, ...]}`` (see :meth:`ModelSpec.layout`)."""
        return self.layout.split(self.theta)

    def set_structures(self, structures: Sequence[Structure]) -> None:
        """Replace every model's structure (parameters are left as they are)."""
        if len(structures) != self.k:
            raise ValueError(f"expected {self.k} structures, got {len(structures)}")
        for s in structures:
            if (s.d, s.m, s.depth) != (self.d, self.m, self.depth):
                raise ValueError(f"structure shape {(s.d, s.m, s.depth)} != flow shape {(self.d, self.m, self.depth)}")
        self.perm.copy_(torch.stack([torch.from_numpy(s.permutation()) for s in structures]))
        self.structures = list(structures)

    @torch.no_grad()
    def reset_parameters(self, model: int, generator: Optional[torch.Generator],
                         layers: Optional[Sequence[int]] = None) -> None:
        """Fresh parameters for ``model`` (all layers, or only ``layers``), per ``spec.init``.

        Constant transforms start as the identity. A conditioner block is drawn from
        ``U(±1/sqrt(fan_in))`` as ``nn.Linear`` does, or is zero where ``init=zero`` puts
        the output layer at zero. Blocks are drawn in layout order, so a model's draws
        depend only on its generator.
        """
        index = list(range(self.depth)) if layers is None else list(layers)
        if not index:
            return
        views = self.params()
        for name, shape in self.layout.blocks:
            size = (len(index),) + tuple(shape[1:])
            if name == "scale":
                value = torch.full(size, 0.0 if self.spec.constant == "exp" else 1.0)
            elif name == "shift" or (self.spec.init == "zero" and name in ("weight", "bias")):
                value = torch.zeros(size)
            else:
                fan_in = self.layout.shape(_fan_in_block(name))[-1]
                bound = 1.0 / math.sqrt(fan_in)
                value = torch.rand(size, generator=generator) * (2 * bound) - bound
            views[name][model, index] = value.to(self.theta)

    @torch.no_grad()
    def copy_model(self, dst: int, source: CouplingFlows, src: int, layers: Optional[Sequence[int]] = None) -> None:
        """Copy the parameters of ``source``'s model ``src`` (all or some layers) into model ``dst``."""
        if layers is None:
            self.theta[dst] = source.theta[src]
            return
        index = list(layers)
        theirs = source.params()
        for name, mine in self.params().items():
            mine[dst, index] = theirs[name][src, index]

    def select(self, index: Sequence[int]) -> CouplingFlows:
        """A new flow of the models ``index``: their structures and a copy of their parameters."""
        part = CouplingFlows(self.spec, [self.structures[i] for i in index], [torch.Generator() for _ in index])
        with torch.no_grad():
            part.theta.copy_(self.theta.detach()[list(index)])
        return part

    def num_parameters(self) -> int:
        """Trainable parameters of one model."""
        return self.layout.numel

    def finite_models(self) -> Tensor:
        """Bool ``[K]``: ``True`` where every parameter of the model is finite."""
        return torch.isfinite(self.theta.detach()).all(1)

    # -- the transforms ----------------------------------------------------------------

    def _steps(self) -> list[tuple[str, int]]:
        """The generating order of the layers' transforms, as ``(kind, layer)`` pairs."""
        first, second = ("constant", "coupling") if self.spec.order == "constant_first" else ("coupling", "constant")
        return [(kind, l) for l in range(self.depth) for kind in (first, second)]

    def _step(self, kind: str, layer: int, x: Tensor, inverse: bool, views: dict[str, tuple[Tensor, ...]]
              ) -> tuple[Tensor, Tensor]:
        if kind == "constant":
            return affine_constant(x, views["scale"][layer], views["shift"][layer], self.spec.constant, inverse)
        n = x.shape[1]
        order = self.perm[:, layer].unsqueeze(1)
        cond, trans = order[..., : self.m].expand(-1, n, -1), order[..., self.m :].expand(-1, n, -1)
        params = {name: view[layer] for name, view in views.items() if name not in ("scale", "shift")}
        return coupling(x, cond, trans, params, self.spec, inverse)

    def _run(self, x: Tensor, to_latent: bool) -> tuple[Tensor, Tensor]:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.k, -1, -1)
        # Data to latent runs the layers as written in the normalizing direction, and their
        # inverses in reverse order in the generative one; latent to data the other way round.
        inverse = to_latent == (self.spec.direction == "generative")
        steps = self._steps()
        if inverse:
            steps.reverse()
        # Each block's layers by one unbind: its backward writes the block's gradient once (one
        # stack), where an index per layer would write a zero-filled copy of the block per layer.
        views = {name: view.unbind(1) for name, view in self.params().items()}
        logdet = x.new_zeros(self.k, x.shape[1])
        for kind, layer in steps:
            x, step_logdet = self._step(kind, layer, x, inverse, views)
            logdet = logdet + step_logdet
        return x, logdet

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent: ``x`` ``[K, N, d]`` (or ``[N, d]``, shared) → ``(z [K, N, d], log|det J| [K, N])``."""
        return self._run(x, to_latent=True)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent to data: ``z`` ``[K, N, d]`` → ``(x [K, N, d], log|det J^-1| [K, N])``."""
        return self._run(z, to_latent=False)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density in nats under each model (standard normal prior): ``[K, N, d]`` or ``[N, d]`` → ``[K, N]``."""
        z, logdet = self(x)
        return logdet - 0.5 * (z.square().sum(2) + self.d * LOG_2PI)

    def nll(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood per model (nats): ``[K, N, d]`` or ``[N, d]`` → ``[K]``."""
        return -self.log_prob(x).mean(1)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` samples from each model: ``[K, n, d]``."""
        z = torch.randn(self.k, n, self.d, generator=generator).to(self.theta)
        return self.inverse(z)[0]
