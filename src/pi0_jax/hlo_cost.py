"""Per-chip costs read from a compiled XLA program, and a step time made from them.

XLA's own `cost_analysis()` counts the body of a while loop once and its `optimal_seconds` comes back negative
for large TPU programs, so the planner reads the optimised HLO text itself:

- every `while` carries `known_trip_count` in its backend config; the instructions of its body (and of whatever
  the body calls) count that many times, nested loops multiply;
- collectives (all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute, sync or async `-start`)
  give their buffer bytes and the size of their replica groups;
- HBM traffic is the bytes each top-level instruction reads and writes (fusion internals stay on chip).

The step time combines these with a chip's published peak FLOP/s and bandwidths (`ChipRates`). Matmul FLOPs
come from the jaxpr (`pi0_jax.train.metrics.jaxpr_matmul_flops`), which already counts scans in full.
"""

from __future__ import annotations

import dataclasses
import math
import re
import numpy as np

_DTYPE_BYTES = {
    "pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
    "c64": 8, "c128": 16,
}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
# Instructions that move no HBM bytes of their own (aliases, control flow whose bodies are counted, metadata).
_NO_TRAFFIC = {
    "parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "call", "conditional",
    "partition-id", "replica-id", "after-all", "iota", "opt-barrier", "add-dependency", "domain", "send", "recv",
}
_SHAPE = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) + r")\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_CALLEE = re.compile(r"\b(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def shape_bytes(shape_text: str) -> int:
  """Bytes of an HLO shape string, tuples summed: 'bf16[8,128]{1,0}' -> 2048."""
  total = 0
  for dtype, dims in _SHAPE.findall(shape_text):
    total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str
  opcode: str
  rest: str  # operands and attributes, as printed

  @property
  def operands(self) -> list[str]:
    head = self.rest.split(")", 1)[0]
    return re.findall(r"%([\w.\-]+)", head)


def parse_module(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
  """Computations of an HLO module by name, and the name of the entry computation."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      current = m.group(2)
      computations[current] = []
      if m.group(1):
        entry = current
      continue
    if current is None:
      continue
    if line.strip() == "}":
      current = None
      continue
    m = _INSTRUCTION.match(line)
    if m:
      computations[current].append(Instruction(m.group(1), m.group(2), m.group(3), m.group(4)))
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text (expected the output of compiled.as_text())")
  return computations, entry


def _callees(inst: Instruction) -> list[str]:
  names = _CALLEE.findall(inst.rest)
  for group in _BRANCHES.findall(inst.rest):
    names += re.findall(r"%([\w.\-]+)", group)
  return names


def execution_counts(computations: dict[str, list[Instruction]], entry: str) -> dict[str, int]:
  """How many times each computation runs per call of the entry, while trip counts applied.

  Fusion bodies and reducers are reached too (with their caller's count); callers of the cost model decide
  which instructions count as top level.
  """
  counts: dict[str, int] = {}
  producers = {i.name: i for insts in computations.values() for i in insts}

  def visit(name: str, times: int):
    counts[name] = counts.get(name, 0) + times
    for inst in computations.get(name, ()):
      trips = _trip_count(inst, computations, producers) if inst.opcode == "while" else 1
      for callee in _callees(inst):
        visit(callee, times * trips)

  visit(entry, 1)
  return counts


def _trip_count(inst: Instruction, computations, producers) -> int:
  """A while loop's trip count: XLA's `known_trip_count` where it printed one (CPU), else read off the loop.

  TPU programs print no trip count; their condition is `counter < N` on one tuple element, the counter starting
  at the constant the while's input tuple holds there (1 after XLA peeled the first iteration out of the loop).
  """
  m = _TRIP.search(inst.rest)
  if m:
    return int(m.group(1))
  cond = re.search(r"condition=%([\w.\-]+)", inst.rest)
  body = computations.get(cond.group(1), []) if cond else []
  local = {i.name: i for i in body}
  for i in body:
    if i.opcode != "compare" or "direction=LT" not in i.rest or len(i.operands) != 2:
      continue
    counter, bound = (local.get(o) for o in i.operands)
    if counter is None or bound is None or counter.opcode != "get-tuple-element" or bound.opcode != "constant":
      continue
    index = int(re.search(r"index=(\d+)", counter.rest).group(1))
    start = 0
    init = producers.get(inst.operands[0]) if inst.operands else None
    if init is not None and init.opcode == "tuple" and index < len(init.operands):
      start = _constant_value(producers, init.operands[index], default=0)
    return max(_constant_value(producers, bound.name, default=1) - start, 0)
  return 1


def _constant_value(producers, name: str, default: int) -> int:
  """An integer constant, followed through copies and bitcasts."""
  inst = producers.get(name)
  while inst is not None and inst.opcode in ("copy", "bitcast", "convert") and inst.operands:
    inst = producers.get(inst.operands[0])
  if inst is None or inst.opcode != "constant":
    return default
  m = re.match(r"\s*(-?\d+)\)", inst.rest)
  return int(m.group(1)) if m else default


def _fusion_bodies(computations) -> set[str]:
  """Computations that run inside one kernel (fusions, reducers, comparators): no HBM traffic of their own."""
  inner = set()
  for insts in computations.values():
    for inst in insts:
      if inst.opcode != "while" and inst.opcode not in ("call", "conditional"):
        inner.update(_callees(inst))
  return inner


def replica_groups(rest: str, num_devices: int) -> list[list[int]]:
  """The device groups of a collective, from any of XLA's three printed forms (explicit, iota, mesh)."""
  m = re.search(r"replica_groups=\{((?:\{[0-9,]*\},?)*)\}", rest)
  if m:
    return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([0-9,]*)\}", m.group(1))] or [
        list(range(num_devices))]
  m = re.search(r"replica_groups=\[([0-9,]+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", rest)
  if m:
    group_shape = [int(x) for x in m.group(1).split(",")]
    ids = _iota(m.group(2), m.group(3))
    return ids.reshape(group_shape[0], -1).tolist()
  m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(\[([0-9,]+)\](?:T\(([0-9,]+)\))?\))?"
                r"\s*\{([^}]*)\}", rest)
  if m:
    axes = re.findall(r"'(\w+)'=(\d+)", m.group(1))
    names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
    ids = _iota(m.group(2), m.group(3)) if m.group(2) else np.arange(math.prod(sizes))
    grid = ids.reshape(sizes)
    members = [names.index(a) for a in re.findall(r"'(\w+)'", m.group(4))]
    others = [i for i in range(len(names)) if i not in members]
    grid = np.transpose(grid, others + members)
    return grid.reshape(-1, math.prod(sizes[i] for i in members)).tolist()
  return [list(range(num_devices))]


def _iota(dims: str, perm: str | None) -> np.ndarray:
  shape = [int(x) for x in dims.split(",")]
  ids = np.arange(math.prod(shape)).reshape(shape)
  if perm:
    ids = np.transpose(ids, [int(x) for x in perm.split(",")])
  return ids.reshape(-1)


@dataclasses.dataclass
class Collective:
  kind: str          # one of COLLECTIVES
  buffer_bytes: int  # the full buffer per chip: all-gather's output, the others' input
  group_size: int
  count: int         # executions per step (loop trip counts applied)
  crosses_slices: bool

  @property
  def wire_bytes(self) -> float:
    """Bytes each chip sends per execution with a ring (bidirectional) algorithm."""
    n = self.group_size
    if n <= 1:
      return 0.0
    frac = (n - 1) / n
    if self.kind == "all-reduce":
      return 2 * self.buffer_bytes * frac
    if self.kind == "collective-permute":
      return float(self.buffer_bytes)
    return self.buffer_bytes * frac


@dataclasses.dataclass
class ProgramCost:
  collectives: list[Collective]
  hbm_bytes: float  # bytes read + written by top-level instructions, per chip per step

  def bytes_by_kind(self) -> dict[str, int]:
    out = {k: 0 for k in COLLECTIVES}
    for c in self.collectives:
      out[c.kind] += c.buffer_bytes * c.count
    return out

  def wire_bytes(self, crosses_slices: bool | None = None) -> float:
    return sum(c.wire_bytes * c.count for c in self.collectives
               if crosses_slices is None or c.crosses_slices == crosses_slices)


def program_cost(hlo_text: str, *, num_devices: int, devices_per_slice: int | None = None) -> ProgramCost:
  """Collectives and HBM traffic of one execution of a compiled SPMD program, per chip.

  Collectives are counted wherever they sit (TPU programs wrap them in fusions), except in the second half of an
  async pair (`...-done`), which names the same transfer as its `-start`.
  """
  computations, entry = parse_module(hlo_text)
  counts = execution_counts(computations, entry)
  inner = _fusion_bodies(computations)
  done_bodies = _async_done_bodies(computations)
  shapes = {i.name: i.shape for insts in computations.values() for i in insts}
  collectives, hbm = [], 0.0
  for name, insts in computations.items():
    times = counts.get(name, 0)
    if not times:
      continue
    for inst in insts:
      dcn = _megascale_all_reduce(inst, shapes, num_devices, devices_per_slice)
      if dcn is not None:
        dcn.count = times
        collectives.append(dcn)
      kind = _collective_kind(inst.opcode, name)
      if kind and name not in done_bodies:
        groups = replica_groups(inst.rest, num_devices)
        collectives.append(Collective(
            kind=kind, buffer_bytes=_collective_buffer(kind, inst, shapes), group_size=len(groups[0]),
            count=times, crosses_slices=_crosses(groups, devices_per_slice)))
      if name in inner or inst.opcode in _NO_TRAFFIC or inst.opcode.endswith("-done"):
        continue
      operand_bytes = sum(shape_bytes(shapes.get(o, "")) for o in inst.operands)
      hbm += times * (operand_bytes + shape_bytes(inst.shape))
  return ProgramCost(collectives=collectives, hbm_bytes=hbm)


def _async_done_bodies(computations) -> set[str]:
  """Computations that continue or finish an async collective started elsewhere (XLA:TPU splits one transfer into
  `async-collective-start` -> continuation fusions -> `async-collective-done`, each wrapping the same collective)."""
  done = set()
  for insts in computations.values():
    chain = {i.name for i in insts if "collective-start" in i.name or i.opcode.endswith("-start")}
    for inst in insts:
      if inst.name in chain:
        continue
      if inst.opcode.endswith("-done"):
        done.update(_callees(inst))
      elif any(o in chain for o in inst.operands):
        if inst.opcode == "get-tuple-element":
          chain.add(inst.name)
        elif inst.opcode == "fusion" and any("async" in n or "done" in n for n in [inst.name] + _callees(inst)):
          chain.add(inst.name)
          done.update(_callees(inst))
  return done


def _megascale_all_reduce(inst: Instruction, shapes, num_devices: int, devices_per_slice: int | None):
  """A cross-slice all-reduce: XLA lowers it to a host-transfer `send` handled by the megascale (DCN) runtime."""
  if inst.opcode != "send" or "_xla_megascale_reduce_operation" not in inst.rest:
    return None
  slices = num_devices // devices_per_slice if devices_per_slice else 1
  data = inst.operands[0] if inst.operands else ""
  return Collective(kind="all-reduce", buffer_bytes=shape_bytes(shapes.get(data, "")), group_size=max(slices, 1),
                    count=1, crosses_slices=True)


def _collective_kind(opcode: str, computation: str = "") -> str | None:
  base = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
  if base == "all-reduce" and computation.startswith("all-reduce-scatter"):
    return "reduce-scatter"  # XLA:TPU's fused reduce-scatter: an all-reduce whose result is sliced in the same kernel
  return base if base in COLLECTIVES else None


def _collective_buffer(kind: str, inst: Instruction, shapes: dict[str, str]) -> int:
  operand_bytes = sum(shape_bytes(shapes.get(o, "")) for o in inst.operands)
  if kind == "all-gather":
    out = shape_bytes(inst.shape)
    # An async all-gather-start returns (operand, output): the gathered buffer is the difference.
    return out - operand_bytes if inst.opcode.endswith("-start") else out
  return operand_bytes


def _crosses(groups: list[list[int]], devices_per_slice: int | None) -> bool:
  if not devices_per_slice:
    return False
  return any(len({d // devices_per_slice for d in g}) > 1 for g in groups)


@dataclasses.dataclass(frozen=True)
class ChipRates:
  """A chip's published rates. ici_bytes_per_s: the all-reduce bandwidth per chip (pod figure / chips)."""
  name: str
  peak_flops: float
  hbm_bytes_per_s: float
  ici_bytes_per_s: float
  dcn_bytes_per_s: float | None


# Cloud TPU documentation: bf16 peak, HBM bandwidth, all-reduce bandwidth per pod / pod chips (v5p: half the
# bidirectional ICI per chip), data-centre network per chip (v5e: 2 x 100 Gbps NICs per 8-chip host).
CHIP_RATES = {
    "v5e": ChipRates("v5e", 197e12, 819e9, 51.2e12 / 256, 25e9 / 8),
    "v5p": ChipRates("v5p", 459e12, 2765e9, 1200e9 / 2, 50e9 / 8),
    "v6e": ChipRates("v6e", 918e12, 1640e9, 102.4e12 / 256, None),
}


def step_time(*, matmul_flops: float, cost: ProgramCost, rates: ChipRates, mfu_ceiling: float = 1.0) -> dict:
  """Projected seconds per step on one chip, with the terms it is made of.

  compute = matmul FLOPs / (peak x mfu_ceiling); memory = HBM bytes / bandwidth; comm = ring bytes / ICI
  (+ slice-crossing bytes / DCN). Assumptions: compute and HBM traffic overlap (the slower one sets the pace,
  a roofline); collectives are scheduled asynchronously by XLA and overlap with compute, except for the part
  that exceeds it. So projected = max(compute, memory, comm); `no_overlap_s` is the pessimistic sum
  max(compute, memory) + comm.
  """
  compute = matmul_flops / (rates.peak_flops * mfu_ceiling)
  memory = cost.hbm_bytes / rates.hbm_bytes_per_s
  ici = cost.wire_bytes(crosses_slices=False) / rates.ici_bytes_per_s
  dcn_bytes = cost.wire_bytes(crosses_slices=True)
  if dcn_bytes and rates.dcn_bytes_per_s is None:
    raise ValueError(f"no data-centre network bandwidth known for {rates.name}: cannot time a multi-slice step")
  dcn = dcn_bytes / rates.dcn_bytes_per_s if dcn_bytes else 0.0
  comm = ici + dcn
  projected = max(compute, memory, comm)
  return {
      "compute_s": compute, "memory_s": memory, "ici_s": ici, "dcn_s": dcn, "comm_s": comm,
      "projected_s": projected, "no_overlap_s": max(compute, memory) + comm,
      "bound": max((("compute", compute), ("memory", memory), ("communication", comm)), key=lambda kv: kv[1])[0],
      "mfu": matmul_flops / rates.peak_flops / projected if projected else None,
      "hbm_bytes": cost.hbm_bytes, "collective_bytes": cost.bytes_by_kind(),
      "ici_wire_bytes": cost.wire_bytes(False), "dcn_wire_bytes": dcn_bytes,
  }

