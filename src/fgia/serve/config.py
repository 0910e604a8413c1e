"""Settings of the search service (limits, thumbnails, batching)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """Limits and tuning of `fgia serve`; every limit answers with a clear 4xx when exceeded."""

    max_upload_bytes: int = 10 * 2**20  # whole request body of POST /search
    upload_timeout_s: float = 30.0  # a request body not fully received by then gets 408 (stalled uploads)
    max_pixels: int = 40_000_000  # width x height, checked from the header before decoding
    max_decoded_bytes: int = 160_000_000  # width x height x bytes per pixel of the decoded upload
    max_decoding: int = 2  # uploads decoded at once (decoding peaks at the full image's memory)
    query_side: int = 1024  # a decoded query is reduced to this longest side before it waits for its batch
    default_top_k: int = 10
    max_top_k: int = 100
    thumb_size: int = 256  # longest side of /thumbs images
    thumb_cache_items: int = 1024
    cache_max_age_s: int = 3600  # Cache-Control max-age of /images and /thumbs
    latency_window: int = 2048  # last N queries behind the /stats percentiles
    batching: str = "on"  # "on": concurrent queries share one engine call (one forward pass); "off": one by one
    max_batch: int = 16
    max_wait_ms: float = 50.0  # at most this long a batch waits for queries still being decoded (none: no wait)
    max_queue: int = 256  # queries waiting beyond this get 503

    def __post_init__(self) -> None:
        if self.batching not in ("on", "off"):
            raise ValueError(f"batching must be 'on' or 'off', got {self.batching!r}")
        positive = ("max_upload_bytes", "max_pixels", "max_decoded_bytes", "max_decoding", "query_side",
                    "default_top_k", "max_top_k", "thumb_size", "thumb_cache_items", "latency_window", "max_batch",
                    "max_queue")
        bad = [name for name in positive if getattr(self, name) < 1]
        if bad:
            raise ValueError(f"ServeConfig: {', '.join(bad)} must be >= 1")
        if not 1 <= self.default_top_k <= self.max_top_k:
            raise ValueError(f"default_top_k={self.default_top_k} must lie in 1..max_top_k={self.max_top_k}")
        if self.max_wait_ms < 0 or self.cache_max_age_s < 0:
            raise ValueError("ServeConfig: max_wait_ms and cache_max_age_s must be >= 0")
        if self.upload_timeout_s <= 0:
            raise ValueError("ServeConfig: upload_timeout_s must be > 0")
