"""Text files as users' editors save them: a byte-order mark, CRLF or CR line ends, UTF-16, bytes that are not
UTF-8; and the classes file's own rules (no empty name between names, no name twice)."""
import pytest

from utils.core import textfile
from utils.core.config import UserError
from utils.core.model_files import get_anchors, get_classes
from utils.core.textfile import display_path, read_text_lines

BOM = b"\xef\xbb\xbf"


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    """Each test starts with no file noted yet (the notes are once per file and process)."""
    monkeypatch.setattr(textfile, "_noted", set())


def test_bom_and_crlf_are_removed_and_said_once(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes(BOM + b"RBC\r\nWBC\r\nPlatelets\r\n")
    notes = []
    assert get_classes(str(path), log=notes.append) == ["RBC", "WBC", "Platelets"]
    assert get_classes(str(path), log=notes.append)[0] == "RBC"  # the first name has no mark left in it
    assert notes == [(f"note: classes file {path}: a UTF-8 byte-order mark (removed) and Windows line ends (CRLF, "
                      f"read as plain line ends)")]


def test_one_class_file_with_a_bom(tmp_path):
    path = tmp_path / "one.txt"
    path.write_bytes(BOM + b"cell")
    notes = []
    assert get_classes(str(path), log=notes.append) == ["cell"]
    assert len(notes) == 1 and "byte-order mark" in notes[0] and "line ends" not in notes[0]


def test_lines_are_split_on_every_line_end_and_nothing_else(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"a\r\nb\rc\nd e\x0cf\n\n")  # a form feed is part of its line, as in a file name
    notes = []
    assert read_text_lines(path, what="list", log=notes.append) == ["a", "b", "c", "d e\x0cf", ""]
    assert "CRLF" in notes[0]
    (tmp_path / "mac.txt").write_bytes(b"a\rb\r")
    assert read_text_lines(tmp_path / "mac.txt", what="list", log=notes.append) == ["a", "b"]
    assert "old Mac line ends (CR" in notes[1]
    (tmp_path / "plain.txt").write_bytes(b"a\nb")
    assert read_text_lines(tmp_path / "plain.txt", what="list", log=notes.append) == ["a", "b"]
    assert len(notes) == 2  # a plain UTF-8 file is read without a note


@pytest.mark.parametrize("encoding, words", [("utf-16-le", "little"), ("utf-16-be", "big")])
def test_utf16_with_its_mark_is_decoded(tmp_path, encoding, words):
    path = tmp_path / "classes.txt"
    mark = b"\xff\xfe" if encoding.endswith("le") else b"\xfe\xff"
    path.write_bytes(mark + "café\r\nthé\r\n".encode(encoding))
    notes = []
    assert get_classes(str(path), log=notes.append) == ["café", "thé"]
    assert f"UTF-16 ({words}-endian)" in notes[0]


def test_bytes_that_are_not_utf8_name_the_file_line_and_bytes(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes(b"cat\ncaf\xe9\ndog\n")  # Latin-1
    with pytest.raises(UserError) as err:
        get_classes(str(path))
    assert str(err.value) == (f"classes file {path} line 2: not UTF-8 text: b'caf\\xe9'; save the file as UTF-8")
    listing = tmp_path / "train.txt"
    listing.write_bytes(b"/data/a.jpg 1,2,3,4,0\r\n/data/caf\xe9.jpg 1,2,3,4,0\r\n")
    with pytest.raises(UserError, match=r"train.txt line 2: not UTF-8 text: b'/data/caf\\xe9.jpg 1,2,3,4,0'; "
                                        r"save the file as UTF-8; if it names a file whose name is not UTF-8, rename"):
        read_text_lines(listing, what="annotation file", names_files=True)


def test_a_long_undecodable_line_is_shown_trimmed(tmp_path):
    path = tmp_path / "long.txt"
    path.write_bytes(b"ok\n" + b"x" * 300 + b"\xff" + b"y" * 300 + b"\n")
    with pytest.raises(UserError) as err:
        read_text_lines(path, what="list")
    assert "line 2" in str(err.value) and "b'" + "x" * 160 + "...'" in str(err.value)


def test_display_path_shows_a_name_that_is_not_utf8_by_its_bytes():
    assert display_path("/data/caf\udce9.jpg") == "b'/data/caf\\xe9.jpg'"
    assert display_path("/data/café #1.jpg") == "/data/café #1.jpg"


def test_empty_and_repeated_class_names_name_the_lines(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("cat\n\ndog\n\n\n")
    with pytest.raises(UserError, match=r"classes.txt line 2 is empty: a class needs a name; delete the line"):
        get_classes(str(path))
    path.write_text("cat\ndog\n \ncat\ndog\n")
    with pytest.raises(UserError) as err:
        get_classes(str(path))
    assert str(err.value).splitlines() == [
        f"classes file {path}: 3 problems:",
        "line 3 is empty: a class needs a name; delete the line (the class ids follow the lines)",
        "line 4: 'cat' is listed on line 1 already; a name is one class, list it once",
        "line 5: 'dog' is listed on line 2 already; a name is one class, list it once"]
    path.write_text("cat\ndog\n\n  \n")  # blank lines after the last name are an editor's, not classes
    assert get_classes(str(path)) == ["cat", "dog"]
    path.write_text("\n \n")
    with pytest.raises(UserError, match="classes.txt: holds no class names"):
        get_classes(str(path))


def test_anchors_file_with_bom_and_crlf(tmp_path):
    path = tmp_path / "anchors.txt"
    path.write_bytes(BOM + b"10,13, 16,30\r\n33,23\r\n")
    notes = []
    assert get_anchors(str(path), log=notes.append) == [[10, 13], [16, 30], [33, 23]]
    assert len(notes) == 1 and "anchors file" in notes[0]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="classes file .*gone.txt: no such file"):
        get_classes(str(tmp_path / "gone.txt"))


@pytest.mark.parametrize("name, text", [("recipe.toml", 'model = "yolov4-tiny"\r\nseed = 3\r\n'),
                                        ("recipe.json", '{"model": "yolov4-tiny",\r\n "seed": 3}\r\n')])
def test_config_file_with_bom_and_crlf(tmp_path, name, text):
    from utils.core.config import read_config_file

    path = tmp_path / name
    path.write_bytes(BOM + text.encode("utf-8"))
    assert read_config_file(str(path)) == {"model": "yolov4-tiny", "seed": 3}


def _text_reads(path) -> list[str]:
    """'line: call' for every read_text / readlines / builtin open call of a module (Image.open is no text read)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            builtin = node.func.id if isinstance(node.func, ast.Name) else ""
            if method in ("read_text", "readlines") or builtin == "open":
                found.append(f"{node.lineno}: {method or builtin}")
    return found


def test_users_text_files_are_read_through_the_one_reader():
    from conftest import REPO

    readers = [*REPO.glob("utils/data/*.py"), REPO / "utils" / "core" / "model_files.py", REPO / "voc_annotation.py",
               REPO / "kmeans_for_anchors.py", REPO / "get_map.py", REPO / "utils" / "eval" / "utils_map.py"]
    direct = {f"{path.relative_to(REPO)}:{call}" for path in readers for call in _text_reads(path)}
    assert not direct, "read users' text files with utils.core.textfile.read_text_lines:\n" + "\n".join(sorted(direct))
    assert _text_reads(REPO / "utils" / "core" / "config.py")  # the scan does find such calls
