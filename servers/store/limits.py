"""Per-identity quotas and size bounds, checked before anything is stored or run.

Every server enforces them on its own, from its own stores: how many models
and data sets an identity keeps here, how many bytes of shares they take,
and how large a model may be (parameters, and the largest layer output at the
largest batch the server will form).
"""

from __future__ import annotations

from dataclasses import dataclass

from ppml.proto import names
from ppml.proto.deploy.topology import LimitsConfig
from ppml.proto.domain.architecture import Architecture, ModelMeta, layer_shapes
from ppml.proto.domain.datasets import DatasetMeta
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.servers.store.storage import ShareStore

MB = 1 << 20


@dataclass(frozen=True)
class Usage:
    count: int
    stored_bytes: int


def model_bytes(meta: ModelMeta) -> int:
    return 8 * meta.parameter_count


def dataset_bytes(meta: DatasetMeta) -> int:
    return 8 * meta.rows * (meta.features + meta.num_classes)


def check_identities(
    identities: tuple[str, ...], what: str, code: ErrorCode = ErrorCode.INVALID_ARGUMENT
) -> None:
    """The shared rule of ``ppml.proto.names``: printable, bounded, not empty."""
    names.check_identities(identities, what, code)


def require_owner(owner: str, caller: str, action: str) -> None:
    """Only an object's owner may ``action`` (e.g. "delete model 'm'")."""
    if caller != owner:
        raise PpmlError(ErrorCode.PERMISSION_DENIED, f"only its owner {owner!r} may {action}")


class Limits:
    """The configured limits of one server, over its model and data set stores."""

    def __init__(
        self,
        config: LimitsConfig | None = None,
        max_batch_rows: int = 64,
        models: ShareStore[ModelMeta] | None = None,
        datasets: ShareStore[DatasetMeta] | None = None,
    ) -> None:
        self.config = config or LimitsConfig()
        self._max_batch_rows = max_batch_rows
        self._models = models
        self._datasets = datasets

    def usage(self, owner: str) -> tuple[Usage, Usage]:
        """``owner``'s models and data sets on this server."""
        models = [m for m in self._models.list() if m.owner == owner] if self._models else []
        data = [d for d in self._datasets.list() if d.owner == owner] if self._datasets else []
        return (
            Usage(len(models), sum(model_bytes(m) for m in models)),
            Usage(len(data), sum(dataset_bytes(d) for d in data)),
        )

    def _check_bytes(self, owner: str, adding: int) -> None:
        models, data = self.usage(owner)
        limit = self.config.max_stored_mb_per_identity * MB
        if models.stored_bytes + data.stored_bytes + adding > limit:
            raise PpmlError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{owner!r} would keep more than {self.config.max_stored_mb_per_identity} MB of "
                "shares on this server; delete models or data sets first",
            )

    def check_model(self, owner: str, architecture: Architecture) -> None:
        """A new model of ``owner``: size bounds and quotas."""
        meta = ModelMeta("-", "", owner, architecture, 0)
        if meta.parameter_count > self.config.max_parameters:
            raise PpmlError(
                ErrorCode.INVALID_MODEL,
                f"{meta.parameter_count:,} parameters; a server accepts at most "
                f"{self.config.max_parameters:,} per model",
            )
        largest = max(_sizes(architecture))
        if largest * self._max_batch_rows > self.config.max_activations:
            raise PpmlError(
                ErrorCode.INVALID_MODEL,
                f"a layer output of {largest:,} values per row is too large: at "
                f"{self._max_batch_rows} rows per batch it exceeds the server's "
                f"{self.config.max_activations:,} values",
            )
        models, _ = self.usage(owner)
        if models.count >= self.config.max_models_per_identity:
            raise PpmlError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{owner!r} already keeps {models.count} models on this server (the limit); "
                "delete one first",
            )
        self._check_bytes(owner, model_bytes(meta))

    def check_dataset(self, header: DatasetMeta) -> None:
        """A new data set: the upload budget and the owner's quotas, before any row arrives."""
        size = dataset_bytes(header)
        if size > self.config.upload_max_mb * MB:
            raise PpmlError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"the data set's shares take {size / MB:,.0f} MB; an upload may take at most "
                f"{self.config.upload_max_mb} MB",
            )
        _, data = self.usage(header.owner)
        if data.count >= self.config.max_datasets_per_identity:
            raise PpmlError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{header.owner!r} already keeps {data.count} data sets on this server "
                "(the limit); delete one first",
            )
        self._check_bytes(header.owner, size)


def _sizes(architecture: Architecture) -> list[int]:
    """Values per row of the input and of every layer's output."""
    sizes = []
    for shape in (architecture.input_shape, *layer_shapes(architecture)):
        count = 1
        for dim in shape:
            count *= dim
        sizes.append(count)
    return sizes
