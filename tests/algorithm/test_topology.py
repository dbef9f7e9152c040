import pytest

from copd_lab.algorithm.topology import build_edges
from copd_lab.config import ConfigError

B = ("text", "image", "video")


def test_hub_and_spoke_is_the_papers_three_branch_wiring():
    assert set(build_edges(B, "hub", "text")) == {("text", "image"), ("image", "text"), ("text", "video"),
                                                 ("video", "text")}


def test_all_pairs_ring_one_way():
    assert len(build_edges(B, "all_pairs")) == 6
    four = ("a", "b", "c", "d")
    assert set(build_edges(four, "ring")) == {("a", "b"), ("b", "a"), ("b", "c"), ("c", "b"), ("c", "d"),
                                              ("d", "c"), ("d", "a"), ("a", "d")}
    assert build_edges(four, "one_way") == [("b", "a"), ("c", "b"), ("d", "c"), ("a", "d")]
    assert build_edges(("a", "b"), "one_way") == [("b", "a")]
    assert len(build_edges(tuple(f"b{i}" for i in range(30)), "all_pairs")) == 30 * 29


def test_explicit_edges_and_drops():
    assert build_edges(B, "edges", edges=("image<-video",)) == [("image", "video")]
    assert ("text", "image") not in build_edges(B, "hub", "text", drop=("text<-image",))
    with pytest.raises(ConfigError, match="not an edge"):
        build_edges(B, "hub", "text", drop=("image<-video",))
    with pytest.raises(ConfigError, match="not a branch"):
        build_edges(B, "edges", edges=("audio<-text",))
    with pytest.raises(ConfigError, match="itself"):
        build_edges(B, "edges", edges=("text<-text",))
