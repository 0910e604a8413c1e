"""The API over a real RetrievalEngine and index (tiny synthetic benchmark): the contract holds end to end."""

from __future__ import annotations

import mimetypes
import typing

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fgia.serve import create_app
from fgia.serve.app import Pipeline


@pytest.fixture(scope="module")
def engine(real_index):
    from fgia.retrieval.engine import RetrievalEngine

    return RetrievalEngine.load(real_index[0], device="cpu")


def upload_file(client, path, **form):
    return client.post("/search", files={"file": (path.name, path.read_bytes(), mimetypes.guess_type(path)[0])},
                       data=form)


def test_api_pipelines_match_the_engine():
    from fgia.retrieval.engine import PIPELINES

    assert set(typing.get_args(Pipeline)) == set(PIPELINES)


def test_database_image_finds_itself_in_every_pipeline(engine, real_index):
    _, database = real_index
    query_id = 7
    path = engine.image_path(query_id)
    sample = next(s for s in database.samples if s.path.resolve() == path)
    with TestClient(create_app(engine)) as client:
        answers = {}
        for pipeline in typing.get_args(Pipeline):
            resp = upload_file(client, path, top_k="5", pipeline=pipeline)
            assert resp.status_code == 200, (pipeline, resp.text)
            answers[pipeline] = body = resp.json()
            top = body["hits"][0]
            assert top["id"] == query_id and top["distance"] < 1e-3, pipeline
            assert top["label"] == database.classes[sample.label]
            assert len(body["hits"]) == 5
            assert body["category"] in engine.system.categories
        body = answers["c2f"]  # the fine stage gives the region and its map
        width, height = body["query_size"]
        x1, y1, x2, y2 = body["region_box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert np.asarray(body["confidence_map"]).ndim == 2
        assert {"features", "coarse_search", "classifier", "fine_search", "total"} <= set(
            body["timings_ms"])
        assert client.get(f"/images/{query_id}").content == path.read_bytes()
        assert client.get(f"/images/{len(engine)}").status_code == 404
        stats = client.get("/stats").json()
        assert stats["images"] == len(database) and stats["queries"]["queries_served"] == len(answers)
