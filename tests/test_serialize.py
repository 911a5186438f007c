"""Serialisation between namespaces: cell functions bind to the loading namespace; classes stay one class."""

from __future__ import annotations

import enum
import pickle
import threading
import types

import numpy as np
import pytest

from notebookos.kernel import serialize as S


def namespace(code: str = "") -> dict:
    ns = {"__name__": "__main__"}
    exec(compile(code, "<cell>", "exec", dont_inherit=True), ns)
    return ns


def transfer(obj, src: dict, dst: dict):
    """Serialise from one namespace and load into another, through bytes as the Raft log would carry them."""
    header, buffers = S.dumps(obj, src)
    raw = [bytearray(b.raw()) for b in buffers]
    return S.loads(pickle.loads(pickle.dumps(header)), raw, dst)


def test_cell_function_travels_without_its_globals_and_binds_to_the_target():
    leader = namespace(
        "import numpy as np\nbig = np.ones(1_000_000)\nk = 1\ndef f(x):\n    return x + k + big[0]\n"
    )
    header, buffers = S.dumps(leader["f"], leader)
    assert len(header) < 2000 and buffers == []  # the 8 MB global was not embedded
    follower = namespace("k = 100\nbig = [5]\n")
    f = S.loads(header, buffers, follower)
    assert f.__globals__ is follower
    assert f(1) == 106
    follower["k"] = 200
    assert f(1) == 206


def test_function_details_survive():
    leader = namespace(
        "def make(n):\n"
        "    def rec(i):\n"
        "        return 0 if i == 0 else rec(i - 1) + n\n"
        "    return rec\n"
        "rec = make(3)\n"
        "def late():\n"
        "    return later\n"
        "    later = 1\n"
        "def annotated(a: int, *, b: str = 'x') -> str:\n"
        "    '''doc'''\n"
        "    return b * a\n"
        "annotated.tag = 'hi'\n"
        "def selfdefault(f=None):\n"
        "    return f\n"
        "selfdefault.__defaults__ = (selfdefault,)\n"
        "sq = lambda v: v * v\n"
    )
    follower = namespace()
    rec = transfer(leader["rec"], leader, follower)
    assert rec(4) == 12  # a recursive closure: the closure cell holds the function itself
    late = transfer(leader["late"], leader, follower)
    with pytest.raises(NameError):  # an empty closure cell stays empty
        late()
    ann = transfer(leader["annotated"], leader, follower)
    assert ann(2) == "xx" and ann(2, b="y") == "yy"
    assert (
        ann.__doc__ == "doc"
        and ann.tag == "hi"
        and ann.__annotations__ == {"a": int, "b": str, "return": str}
    )
    assert ann.__qualname__ == "annotated" and ann.__module__ == "__main__"
    sd = transfer(leader["selfdefault"], leader, follower)
    assert sd() is sd
    assert transfer(leader["sq"], leader, follower)(7) == 49


CLASSES = """
k = 1
class Base:
    def hello(self):
        return "base" + str(k)

class Foo(Base):
    z = 5
    def __init__(self, v):
        self.v = v
    def hello(self):
        return super().hello() + ":" + str(self.v)
    @staticmethod
    def s():
        return k
    @classmethod
    def c(cls):
        return cls.z
    @property
    def p(self):
        return self.v * k

inst = Foo(7)
"""


def test_class_and_instance_loaded_separately_keep_one_class_bound_to_the_target():
    leader = namespace(CLASSES)
    follower = namespace("k = 10\n")
    Foo = transfer(leader["Foo"], leader, follower)
    inst = transfer(leader["inst"], leader, follower)
    assert isinstance(inst, Foo) and type(inst) is Foo
    # The follower has its own class (not the leader's), whose methods read the follower's globals.
    assert Foo is not leader["Foo"] and Foo.hello.__globals__ is follower
    assert inst.hello() == "base10:7" and Foo.s() == 10 and Foo.c() == 5 and inst.p == 70
    assert transfer(leader["inst"], leader, follower).__class__ is Foo


def test_failover_brings_the_original_class_back():
    leader = namespace(CLASSES)
    follower = namespace()
    inst_f = transfer(leader["inst"], leader, follower)
    back = transfer(inst_f, follower, leader)  # the follower led a cell; the old leader applies it
    assert type(back) is leader["Foo"] and isinstance(back, leader["Base"])


def test_enum_identity():
    leader = namespace("import enum\nclass Color(enum.Enum):\n    RED = 1\n    BLUE = 2\nc = Color.RED\n")
    follower = namespace()
    c = transfer(leader["c"], leader, follower)
    Color = transfer(leader["Color"], leader, follower)
    assert c is Color.RED and Color is not leader["Color"]
    assert isinstance(Color.BLUE, enum.Enum)


MANY = (
    CLASSES
    + """
import dataclasses, enum, functools, json
import numpy as np
class B(Foo):
    def hello(self):
        return "B"
@dataclasses.dataclass
class D:
    a: int = 1
    b: str = "s"
class E(enum.IntEnum):
    X = 1
def outer():
    q = 5
    def inner():
        return q + k
    return inner
inner = outer()
b = B(1)
d = D()
e = E.X
part = functools.partial(outer)
bound = inst.hello
arr = np.arange(12.0).reshape(3, 4)
farr = np.asfortranarray(arr)
data = {"a": [1, 2.5, "x"], "t": ("a", b"b")}
objs = [inst, b, d, inner]
f = lambda: k
"""
)


def test_digests_agree_between_replicas():
    leader = namespace(MANY)
    # A bound method of a cell class pickles its function apart from the class; a replica that loaded the
    # class earlier keeps the class's own function, so the pickles differ in structure (not in behaviour).
    names = [n for n in leader if not n.startswith("__")]
    compared = [n for n in names if n != "bound"]
    replicas = [leader]
    for _ in range(2):  # leader -> follower -> a third replica, each loading every name separately
        src, dst = replicas[-1], namespace()
        for name in names:
            dst[name] = transfer(src[name], src, dst)
        replicas.append(dst)
    digests = [S.namespace_digests(r, compared) for r in replicas]
    assert digests[0] == digests[1] == digests[2]
    assert digests[0]["json"] == "module:json"
    follower = replicas[1]
    assert follower["bound"]() == "base1:7" and follower["bound"].__self__ is not follower["inst"]
    assert follower["inner"]() == 6 and follower["part"]()() == 6 and follower["d"] == follower["D"]()
    # Without the canonical round trip, the digest still does not drift on the replica that made the values.
    before = S.namespace_digests(leader, ["Foo"], canonical=False)
    S.dumps(leader["inst"], leader)  # pickling an instance adds __slotnames__ to its class
    assert S.namespace_digests(leader, ["Foo"], canonical=False) == before


def test_an_old_instance_does_not_revert_its_class():
    leader = namespace(CLASSES)
    old_inst = S.dumps(leader["inst"], leader)
    follower = namespace("k = 1\n")
    follower["Foo"] = transfer(leader["Foo"], leader, follower)
    exec("Foo.hello = lambda self: 'patched'\n", leader)
    follower["Foo"] = transfer(leader["Foo"], leader, follower)  # the tracker ships a class when it changes
    assert follower["Foo"](0).hello() == "patched"
    inst = S.loads(*old_inst, follower)  # e.g. restored from a snapshot ref taken before the patch
    assert type(inst) is follower["Foo"] and inst.hello() == "patched"


def test_numpy_buffers_are_out_of_band_and_loads_are_writable():
    ns = namespace()
    arr = np.arange(100_000, dtype=np.float32)
    header, buffers = S.dumps(arr, ns)
    assert len(buffers) == 1 and len(header) < 300
    out = S.loads(header, [bytearray(buffers[0].raw())], ns)
    assert np.array_equal(out, arr) and out.flags.writeable
    inband, none = S.dumps(arr, ns, out_of_band=False)
    assert none == [] and np.array_equal(S.loads(inband, None, ns), arr)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda tmp: open(tmp / "f.txt", "w"), "cannot pickle '_io.TextIOWrapper' object"),
        (lambda tmp: open(tmp / "f.txt", "rb"), "cannot pickle '_io.BufferedReader' object"),
        (lambda tmp: [threading.Lock()], "cannot pickle '_thread.lock' object"),
        (lambda tmp: (i for i in range(3)), "cannot pickle 'generator' object"),
    ],
)
def test_unserialisable_values_give_a_short_reason(tmp_path, make, reason):
    (tmp_path / "f.txt").write_text("data")
    obj = make(tmp_path)
    try:
        with pytest.raises(S.Unserialisable) as info:
            S.check_dumps("v", obj, namespace())
        assert info.value.name == "v" and info.value.reason == reason
        assert info.value.type_name == type(obj).__qualname__
        assert str(info.value) == f"v ({type(obj).__qualname__}): {reason}"
    finally:
        if hasattr(obj, "close"):
            obj.close()


def test_readable_text_file_is_refused_not_read(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("0123456789")
    with open(path) as fh:
        fh.read(3)
        with pytest.raises(S.Unserialisable):
            S.check_dumps("fh", fh, namespace())
        assert fh.tell() == 3


def test_cell_function_needs_a_namespace_to_load():
    ns = namespace("def f():\n    return 1\n")
    header, _ = S.dumps(ns["f"], ns)
    with pytest.raises(pickle.UnpicklingError, match="notebook cell"):
        pickle.loads(header)


def test_functions_of_other_namespaces_use_cloudpickle_as_usual():
    other = namespace("k = 3\ndef g():\n    return k\n")
    ns = namespace()
    g = transfer(other["g"], ns, namespace())
    assert g() == 3 and isinstance(g, types.FunctionType)
