"""The pid directory watch: inotify on a real tmp directory."""

from __future__ import annotations

from pathlib import Path

from ceilometer_cmt.backends.perf.pid_dir_watch import PidDirWatch


def test_lists_once_until_the_directory_changes(tmp_path: Path) -> None:
    (tmp_path / "a.pid").write_text("1\n")
    (tmp_path / "a.xml").write_text("<domstatus/>\n")
    watch = PidDirWatch(str(tmp_path))
    try:
        first = watch.inodes()
        assert first == {"a.pid": (tmp_path / "a.pid").stat().st_ino}
        assert watch.inodes() is first and watch.scans == 1
        (tmp_path / "b.pid").write_text("2\n")
        assert sorted(watch.inodes()) == ["a.pid", "b.pid"] and watch.scans == 2
    finally:
        watch.close()


def test_pid_dir_watch_follows_a_removed_and_made_again_dir(tmp_path: Path) -> None:
    """The kernel drops the watch with its directory (IN_IGNORED): the watch is
    closed, the directory listed while it is gone, and watched again once back."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "a.pid").write_text("1\n")
    watch = PidDirWatch(str(run))
    try:
        assert list(watch.inodes()) == ["a.pid"] and watch.inotify is not None
        assert list(watch.inodes()) == ["a.pid"] and watch.scans == 1  # nothing changed
        (run / "a.pid").unlink()
        run.rmdir()
        assert watch.inodes() == {} and watch.inotify is None
        assert watch.inodes() == {} and watch.scans == 3  # no watch: listed each time
        run.mkdir()
        (run / "b.pid").write_text("2\n")
        assert list(watch.inodes()) == ["b.pid"] and watch.inotify is not None
        (run / "c.pid").write_text("3\n")
        assert sorted(watch.inodes()) == ["b.pid", "c.pid"]
    finally:
        watch.close()
    assert watch.inotify is None
