"""swarm.py's piece slices (the priorities for a peer's rank and the tracker URL to ask it at), and
the pieces a delta deploy counts as had."""

import subprocess
import sys

import pytest
from salt_lssd import swarm
from salt_lssd.swarm import slice_priorities, slice_url

SIZES = [1, 2, 7, 64, 100, 1023]
PEER_COUNTS = [1, 2, 3, 5, 8, 13, 32]


def own_pieces(num_pieces, rank, peers):
    """The indices ``rank`` puts first, checking that every priority is 7 or 4."""
    priorities = slice_priorities(num_pieces, rank, peers)
    assert len(priorities) == num_pieces
    assert set(priorities) <= {7, 4}
    return [i for i, p in enumerate(priorities) if p == 7]


@pytest.mark.parametrize("peers", PEER_COUNTS)
@pytest.mark.parametrize("num_pieces", SIZES)
def test_every_piece_is_in_exactly_one_slice(num_pieces, peers):
    slices = [own_pieces(num_pieces, rank, peers) for rank in range(peers)]
    # Concatenated in rank order they are 0..num_pieces-1: each piece is in one slice, and
    # the slices are contiguous parts in rank order.
    assert [i for own in slices for i in own] == list(range(num_pieces))
    sizes = [len(own) for own in slices]
    assert max(sizes) - min(sizes) <= 1


def test_more_peers_than_pieces_leaves_some_slices_empty():
    num_pieces, peers = 3, 8
    slices = [own_pieces(num_pieces, rank, peers) for rank in range(peers)]
    assert sorted(i for own in slices for i in own) == [0, 1, 2]
    assert [len(own) for own in slices].count(0) == peers - num_pieces
    for rank in range(peers):
        if not slices[rank]:
            assert slice_priorities(num_pieces, rank, peers) == [4] * num_pieces


def test_one_peer_gets_every_piece_first():
    assert slice_priorities(5, 0, 1) == [7] * 5
    assert slice_priorities(0, 0, 1) == []


def test_slices_of_a_small_torrent():
    assert slice_priorities(10, 0, 3) == [7, 7, 7, 4, 4, 4, 4, 4, 4, 4]
    assert slice_priorities(10, 1, 3) == [4, 4, 4, 7, 7, 7, 4, 4, 4, 4]
    assert slice_priorities(10, 2, 3) == [4, 4, 4, 4, 4, 4, 7, 7, 7, 7]


@pytest.mark.parametrize(
    "announce,expected",
    [
        ("http://tracker01:8998/announce", "http://tracker01:8998/slice"),
        ("http://127.0.0.1:8998/announce", "http://127.0.0.1:8998/slice"),
        ("http://[::1]:8998/announce", "http://[::1]:8998/slice"),
        ("http://tracker01/announce", "http://tracker01/slice"),
        ("http://tracker01:8998/tracker/announce", "http://tracker01:8998/tracker/slice"),
        ("http://tracker01:8998/scrape", None),
        ("http://tracker01:8998/announce/", None),
        ("http://tracker01:8998/announcer", None),
        ("http://tracker01:8998/announce?passkey=abc", None),
        ("http://tracker01:8998/", None),
        ("", None),
    ],
)
def test_slice_url(announce, expected):
    assert slice_url(announce) == expected


def test_slice_url_matches_the_tracker_route():
    from salt_lssd.tracker import announce_url

    assert slice_url(announce_url("tracker01", 8998)) == "http://tracker01:8998/slice"


def test_slice_functions_need_no_libtorrent():
    # libtorrent is imported inside the functions that drive a session, not by the module.
    probe = (
        "import sys; sys.modules['libtorrent'] = None\n"
        "from salt_lssd import swarm\n"
        "print(swarm.slice_priorities(4, 1, 2), swarm.slice_url('http://t:1/announce'))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.split("\n")[0] == "[4, 4, 7, 7] http://t:1/slice"


def test_priorities_are_libtorrents_range():
    # libtorrent piece priorities are 0 (skip) .. 7 (top); 0 would never download a piece.
    assert 0 < swarm._REST_PRIORITY < swarm._SLICE_PRIORITY <= 7


def _layout(files, piece_length):
    """A file_storage of ``files`` ((path, size, pad?)) below the torrent name "t"."""
    import libtorrent as lt

    layout = lt.file_storage()
    for path, size, pad in files:
        layout.add_file(f"t/{path}", size, flags=lt.file_storage.flag_pad_file if pad else 0)
    layout.set_piece_length(piece_length)
    layout.set_num_pieces(-(-layout.total_size() // piece_length))
    return layout


def test_placed_pieces_are_the_manifest_and_the_placed_files_only():
    block = 16384
    layout = _layout([(".lssd-manifest.json", 100, False), (".pad/16284", block - 100, True),
                      ("a", 20000, False), (".pad/12768", 2 * block - 20000, True),
                      ("b", 5000, False)], block)
    assert swarm.placed_pieces(layout, {"a"}) == [True, True, True, False]
    assert swarm.placed_pieces(layout, set()) == [True, False, False, False]
    assert swarm.placed_pieces(layout, {"a", "b"}) == [True] * 4


def test_a_piece_shared_with_a_file_not_placed_is_not_had():
    # Without pad files two files share a piece: placing one of them does not make it whole.
    layout = _layout([(".lssd-manifest.json", 16384, False), ("c", 10000, False), ("d", 10000, False)], 16384)
    assert swarm.placed_pieces(layout, {"c"}) == [True, False, False]
    assert swarm.placed_pieces(layout, {"c", "d"}) == [True, True, True]
