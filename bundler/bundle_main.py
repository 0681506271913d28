"""Entry point of a llamazip bundle, stored at the top of its ZIP as __main__.py.

Both launchers run the same few lines (bundler/launcher.py, BOOT): open the bundle
with zipfile and execute this module with `__archive__` (the bundle's path) and
`__zip__` (the open ZipFile). `python3 BUNDLE` works too for bundles under 4 GiB,
through zipimport.

Modules come from the ZIP through a finder of our own rather than zipimport:
before Python 3.13 zipimport cannot read ZIP64 archives, and a bundle with a model
over 4 GiB is one. The finder also answers `get_data()` and `archive` the way a
zipimporter does, for code that reads its own package data (the kernels).

Written without f-strings so that a python3 older than 3.9 can parse it and say so.
"""

import sys

if sys.version_info < (3, 9):
    sys.stderr.write("error: this llamafile needs Python 3.9 or newer, found %d.%d; "
                     "install a newer python3 or build it with --launcher native\n"
                     % sys.version_info[:2])
    sys.exit(2)

import importlib.util  # noqa: E402  (after the version check on purpose)
import zipimport  # noqa: E402


# What every bundle carries (bundler/build.py: runtime/ and VENDORED), even if a
# damaged one has lost them.
OWN_PACKAGES = {"runtime", "jinja2", "markupsafe"}


class BundleImporter(zipimport.zipimporter):
    """Imports the bundle's pure-Python packages (runtime, jinja2, markupsafe) from source.

    A zipimporter by type only (its __init__, which cannot read ZIP64 before 3.13, is
    not called): code that asks "was I loaded from a ZIP?" with isinstance, as
    runtime/kernels.py does, gets yes, and then uses `archive` and `get_data` below.
    """

    def __init__(self, archive, zip_file):  # noqa: super().__init__ deliberately not called
        self.archive = archive
        self.prefix = ""
        self._files = {}
        self.zip = zip_file
        self.members = set(zip_file.namelist())
        # The bundle's own top-level folders (runtime, jinja2, markupsafe, kernels):
        # modules under these names are never looked for anywhere else.
        self.own = set(m.split("/")[0] for m in self.members if "/" in m) | OWN_PACKAGES

    def _member(self, fullname):
        base = fullname.replace(".", "/")
        if base + "/__init__.py" in self.members:
            return base + "/__init__.py", True
        if base + ".py" in self.members:
            return base + ".py", False
        return None, False

    def find_spec(self, fullname, path=None, target=None):
        member, is_package = self._member(fullname)
        if member is None:
            if fullname.split(".")[0] in self.own:
                # a module of ours that is missing: the bundle is damaged, and a copy
                # from the host's site-packages would be some other version
                raise ModuleNotFoundError("the bundle has no module %s; run it with --verify, "
                                          "then download or build it again" % fullname,
                                          name=fullname)
            return None
        spec = importlib.util.spec_from_loader(
            fullname, self, origin=self.archive + "/" + member, is_package=is_package)
        spec.has_location = True  # so that modules get a __file__
        if is_package:
            spec.submodule_search_locations = [self.archive + "/" + fullname.replace(".", "/")]
        return spec

    def invalidate_caches(self):
        pass  # the bundle does not change under us; zipimporter's would reread it

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        member, _ = self._member(module.__name__)
        code = compile(self._read(member), module.__spec__.origin, "exec", dont_inherit=True)
        exec(code, module.__dict__)

    def _read(self, member):
        """A member's bytes; a damaged one (bad CRC, bad deflate data) is an ImportError
        naming it, not a zipfile or zlib traceback."""
        try:
            return self.zip.read(member)
        except Exception as e:
            raise BundleDamaged(member, e) from None

    def get_source(self, fullname):
        member, _ = self._member(fullname)
        return None if member is None else self._read(member).decode("utf-8")

    def get_data(self, path):
        """Bytes of a member, named like zipimporter's get_data: ARCHIVE/member or member."""
        prefix = self.archive + "/"
        member = path[len(prefix):] if path.startswith(prefix) else path
        if member not in self.members:
            raise OSError("no member %s in %s" % (member, self.archive))
        try:
            return self.zip.read(member)
        except Exception as e:
            raise OSError("the bundle's member %s is damaged (%s)" % (member, e)) from None


class BundleDamaged(ImportError):
    def __init__(self, member, cause):
        ImportError.__init__(self, "the bundle's member %s is damaged (%s); run it with "
                             "--verify, then download or build it again" % (member, cause))


VERIFIER = "runtime/bundle_verify.py"


def verify(archive, zip_file):
    """--verify: run the verifier's source alone, before any other code of the bundle."""
    try:
        source = zip_file.read(VERIFIER)
        namespace = {"__name__": "llamazip_bundle_verify"}
        exec(compile(source, archive + "/" + VERIFIER, "exec", dont_inherit=True), namespace)
    except Exception as e:
        sys.stderr.write("error: the bundle's verifier %s is damaged (%s); download or build "
                         "the bundle again\n" % (VERIFIER, e))
        return 2
    return namespace["verify"](archive, zip_file)


def follow_the_native_launcher():
    """Native bundles: PyInstaller's bootloader unpacks Python into a _MEI folder and
    runs us as its child; it removes the folder when we end. If the bootloader is
    killed outright (SIGKILL), nothing would stop us or remove the folder: ask the
    kernel for SIGTERM when our parent dies (PR_SET_PDEATHSIG), and on that signal,
    with the bootloader gone, remove the folder ourselves and exit (143)."""
    meipass = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or not meipass or not sys.platform.startswith("linux"):
        return
    import ctypes
    import os
    import signal
    parent = os.getppid()

    def on_term(signum, frame):
        if os.getppid() != parent:   # the bootloader is gone: its cleanup is ours now
            import shutil
            shutil.rmtree(meipass, ignore_errors=True)
            os._exit(128 + signum)
        signal.signal(signum, signal.SIG_DFL)   # a plain SIGTERM: as before
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:   # it died before the request took effect
        on_term(signal.SIGTERM, None)


def main():
    archive = globals().get("__archive__")
    zip_file = globals().get("__zip__")
    if archive is None:  # started as `python3 BUNDLE`: zipimport found this module
        import zipfile
        archive = sys.argv[0]
        zip_file = zipfile.ZipFile(archive)
    if "--verify" in sys.argv[1:]:
        return verify(archive, zip_file)
    follow_the_native_launcher()
    sys.meta_path.insert(0, BundleImporter(archive, zip_file))
    try:
        from runtime.cli import main as run_command_line
        return run_command_line(sys.argv[1:], bundle=(archive, zip_file))
    except ImportError as e:   # a damaged or missing module of the bundle: one line
        sys.stderr.write("error: %s\n" % e)
        return 2


sys.exit(main())
