"""How many micro-batches a training batch needs to fit the machine's memory.

The BiT-HyperRule trains with batches of 512 at 384 to 480 pixels: far more activations than a
CPU host or a single accelerator holds. `plan_accumulation` splits such a batch into
micro-batches whose gradients are summed before one update (the optimizer's gradient
accumulation), so the effective batch, the learning rate and the schedule stay the rule's.

The estimate, in bytes, of a training step with a micro-batch of m images at r x r pixels:

    fixed + m * per_image
    fixed     = PARAMETER_COPIES * parameters * 4
                (weights, gradients, momentum, accumulated gradients, standardized kernels)
    per_image = ACTIVATION_COPIES * activations(r) * bytes_per_value + INPUT_COPIES * r*r*3*4

where `activations(r)` counts the values every layer of the network outputs for one image at
r x r (`activation_count`, from the architecture: stem, and every convolution, normalization
and sum of each unit), `bytes_per_value` is 4 for float32 and 2 for a bfloat16 policy, and the
input term holds the batches the input pipeline prepares ahead. The constants are calibrated
against the peak resident memory of real training steps (benchmarks/scale.py
--part=step_memory; benchmarks/RESULTS.md). The micro-batch is the largest divisor of the batch
(and multiple of the replicas) whose estimate stays under `MEMORY_FRACTION` of the memory
available when the run starts (`available_memory_bytes`: the host's, or its cgroup limit's).

Example:
    >>> plan = plan_accumulation("BiT-M-R50x1", batch_size=512, resolution=384)
    >>> plan.accumulation, plan.micro_batch
    (64, 8)
"""

from __future__ import annotations

import dataclasses

#: Copies of every parameter a training step holds (see the module's docstring).
PARAMETER_COPIES = 6
#: Bytes kept for the backward pass per byte of activation values (below 1: the CPU kernels
#: compute some normalization outputs again instead of keeping them; bit_tf.kernels).
ACTIVATION_COPIES = 0.75
#: Input images per micro-batch image held by the input pipeline (prefetched batches, the
#: batch being formed, the batch in the step).
INPUT_COPIES = 4
#: The share of the available memory a run's estimate may use.
MEMORY_FRACTION = 0.6


@dataclasses.dataclass(frozen=True)
class Unit:
    """One residual unit: "bottleneck" or "basic", its middle and output channels, stride.

    Example:
        >>> Unit("bottleneck", middle=64, output=256, stride=1)
    """

    kind: str
    middle: int
    output: int
    stride: int


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A BiT ResNetV2's shape: the stem's channels, the units, the classes of the head.

    Example:
        >>> Architecture.from_name("BiT-S-R50x1").parameter_count()
        23500352
    """

    stem_channels: int
    units: tuple
    num_classes: int = 0

    @classmethod
    def from_layout(
        cls, units_per_block, width: int, basic: bool, num_classes: int = 0
    ) -> Architecture:
        """The architecture of `bit_tf.resnet_v2(units_per_block=..., width_factor=...)`.

        Example:
            >>> len(Architecture.from_layout((3, 4, 6, 3), 1, basic=False).units)
            16
        """
        units = []
        for block, count in enumerate(units_per_block):
            middle = 64 * width * 2**block
            output = middle if basic else 4 * middle
            for index in range(count):
                stride = 2 if block > 0 and index == 0 else 1
                units.append(Unit("basic" if basic else "bottleneck", middle, output, stride))
        return cls(64 * width, tuple(units), num_classes)

    @classmethod
    def from_name(cls, name: str, num_classes: int = 0) -> Architecture:
        """The architecture of a model name such as "BiT-M-R50x1".

        Raises:
            ValueError: not a BiT model name.

        Example:
            >>> Architecture.from_name("BiT-S-R18x1").units[0].kind
            'basic'
        """
        from bit_tf.models.registry import BASIC_DEPTHS, UNITS_PER_BLOCK, architecture

        depth, width = architecture(name)
        return cls.from_layout(UNITS_PER_BLOCK[depth], width, depth in BASIC_DEPTHS, num_classes)

    @classmethod
    def from_model(cls, model) -> Architecture | None:
        """The architecture of a bit_tf Keras model (its stem and residual units); None for a
        model of another kind.

        Example:
            >>> Architecture.from_model(bit_tf.create_model("BiT-S-R26x1")).stem_channels
            64
        """
        from bit_tf.models.layers import PreActBasic, PreActBottleneck

        try:
            stem = model.get_layer("root_conv").filters
        except (ValueError, AttributeError):
            return None
        units = []
        for layer in model.layers:
            if isinstance(layer, PreActBottleneck):
                units.append(
                    Unit("bottleneck", layer.middle_channels, layer.output_channels, layer.strides)
                )
            elif isinstance(layer, PreActBasic):
                units.append(
                    Unit("basic", layer.output_channels, layer.output_channels, layer.strides)
                )
        if not units:
            return None
        head = model.layers[-1]
        num_classes = getattr(head, "units", 0) if head.name == "head" else 0
        return cls(int(stem), tuple(units), int(num_classes))

    def activation_count(self, resolution: int) -> int:
        """The values the network's layers output for one image at `resolution` x `resolution`.

        Example:
            >>> Architecture.from_name("BiT-S-R50x1").activation_count(128) > 0
            True
        """
        size = (resolution - 1) // 2 + 1  # the 7x7/2 stem convolution (padding 3)
        count = resolution * resolution * 3 * 2 + size * size * self.stem_channels
        size = (size - 1) // 2 + 1  # the 3x3/2 max pool (padding 1)
        channels = self.stem_channels
        count += size * size * channels
        for unit in self.units:
            out_size = (size - 1) // unit.stride + 1
            inputs, outputs = size * size, out_size * out_size
            count += inputs * channels  # the pre-activation (normalization and ReLU)
            if unit.stride != 1 or channels != unit.output:
                count += outputs * unit.output  # the projection
            if unit.kind == "bottleneck":
                count += 2 * inputs * unit.middle  # 1x1 convolution, its normalization
                count += 2 * outputs * unit.middle  # 3x3 convolution, its normalization
            else:
                count += 2 * outputs * unit.middle  # first 3x3 convolution, its normalization
            count += 2 * outputs * unit.output  # the last convolution and the sum
            channels, size = unit.output, out_size
        return int(count + 2 * size * size * channels)  # the head's normalization and ReLU

    def parameter_count(self) -> int:
        """The weights of the convolutions and the head (normalization scales and offsets
        included).

        Example:
            >>> Architecture.from_name("BiT-S-R50x1", num_classes=1000).parameter_count()
            25549352
        """
        count = 7 * 7 * 3 * self.stem_channels
        channels = self.stem_channels
        for unit in self.units:
            count += 2 * channels  # pre-activation normalization
            if unit.stride != 1 or channels != unit.output:
                count += channels * unit.output
            if unit.kind == "bottleneck":
                count += channels * unit.middle + 2 * unit.middle
                count += 9 * unit.middle * unit.middle + 2 * unit.middle
                count += unit.middle * unit.output
            else:
                count += 9 * channels * unit.middle + 2 * unit.middle
                count += 9 * unit.middle * unit.output
            channels = unit.output
        count += 2 * channels
        if self.num_classes:
            count += (channels + 1) * self.num_classes
        return int(count)


def training_bytes(architecture: Architecture, micro_batch: int, resolution: int, dtype: str):
    """The estimate (see the module's docstring) of a training step's memory, in bytes.

    Example:
        >>> training_bytes(Architecture.from_name("BiT-S-R50x1"), 16, 128, "float32") > 0
        True
    """
    per_value = 2 if "bfloat16" in str(dtype) or "float16" in str(dtype) else 4
    fixed = PARAMETER_COPIES * architecture.parameter_count() * 4
    per_image = ACTIVATION_COPIES * architecture.activation_count(resolution) * per_value
    per_image += INPUT_COPIES * resolution * resolution * 3 * 4
    return int(fixed + micro_batch * per_image)


def available_memory_bytes() -> int | None:
    """The memory this process may still use: the host's available memory (`MemAvailable`),
    or less where a cgroup limits the process; None where neither can be read.

    Example:
        >>> available_memory_bytes() > 0
        True
    """
    available = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            with open(limit_file) as limit, open(usage_file) as usage:
                text = limit.read().strip()
                if text == "max":
                    continue
                room = int(text) - int(usage.read().strip())
        except (OSError, ValueError):
            continue
        if room > 0 and (available is None or room < available):
            available = room
    return available


@dataclasses.dataclass(frozen=True)
class AccumulationPlan:
    """Micro-batches per update and the micro-batch; the estimates (bytes) of a step on the
    micro-batch and on the whole batch, and the memory they were planned against.

    Example:
        >>> plan = plan_accumulation("BiT-M-R50x1", 512, 384)
        >>> print(plan.describe(512, 384))
    """

    accumulation: int
    micro_batch: int
    estimate_bytes: int
    batch_estimate_bytes: int
    available_bytes: int | None

    def describe(self, batch_size: int, resolution: int) -> str:
        """One line for the log: the split, and why.

        Example:
            >>> plan_accumulation("BiT-M-R50x1", 512, 384).describe(512, 384)
            'A batch of 512 at 384x384 needs about ... GiB, ...'
        """
        available = (self.available_bytes or 0) / 2**30
        return (
            f"A batch of {batch_size} at {resolution}x{resolution} needs about "
            f"{self.batch_estimate_bytes / 2**30:.1f} GiB, more than {MEMORY_FRACTION:.0%} of "
            f"the {available:.1f} GiB available: training on {self.accumulation} micro-batches "
            f"of {self.micro_batch} per update (gradient_accumulation_steps="
            f"{self.accumulation}), about {self.estimate_bytes / 2**30:.1f} GiB; the effective "
            "batch and the schedule are the same."
        )


def plan_accumulation(
    architecture: Architecture | str,
    batch_size: int,
    resolution: int,
    dtype: str = "float32",
    replicas: int = 1,
    available_bytes: int | None = None,
) -> AccumulationPlan:
    """The fewest micro-batches (a divisor of `batch_size`, each a multiple of `replicas`)
    whose step fits `MEMORY_FRACTION` of the available memory; 1 where the batch fits or the
    available memory is unknown; the most there can be where nothing fits.

    Example:
        >>> plan_accumulation("BiT-S-R26x1", batch_size=32, resolution=32).accumulation
        1
    """
    if isinstance(architecture, str):
        architecture = Architecture.from_name(architecture)
    if available_bytes is None:
        available_bytes = available_memory_bytes()
    whole = training_bytes(architecture, batch_size, resolution, dtype)
    candidates = [
        accumulation
        for accumulation in range(1, batch_size + 1)
        if batch_size % accumulation == 0 and (batch_size // accumulation) % replicas == 0
    ] or [1]
    chosen = candidates[-1]
    for accumulation in candidates:
        estimate = training_bytes(architecture, batch_size // accumulation, resolution, dtype)
        if available_bytes is None or estimate <= MEMORY_FRACTION * available_bytes:
            chosen = accumulation
            break
    micro = batch_size // chosen
    estimate = training_bytes(architecture, micro, resolution, dtype)
    return AccumulationPlan(chosen, micro, estimate, whole, available_bytes)


__all__ = [
    "ACTIVATION_COPIES",
    "INPUT_COPIES",
    "MEMORY_FRACTION",
    "PARAMETER_COPIES",
    "AccumulationPlan",
    "Architecture",
    "Unit",
    "available_memory_bytes",
    "plan_accumulation",
    "training_bytes",
]
