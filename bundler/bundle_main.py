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
        code = compile(self.zip.read(member), module.__spec__.origin, "exec", dont_inherit=True)
        exec(code, module.__dict__)

    def get_source(self, fullname):
        member, _ = self._member(fullname)
        return None if member is None else self.zip.read(member).decode("utf-8")

    def get_data(self, path):
        """Bytes of a member, named like zipimporter's get_data: ARCHIVE/member or member."""
        prefix = self.archive + "/"
        member = path[len(prefix):] if path.startswith(prefix) else path
        if member not in self.members:
            raise OSError("no member %s in %s" % (member, self.archive))
        return self.zip.read(member)


def main():
    archive = globals().get("__archive__")
    zip_file = globals().get("__zip__")
    if archive is None:  # started as `python3 BUNDLE`: zipimport found this module
        import zipfile
        archive = sys.argv[0]
        zip_file = zipfile.ZipFile(archive)
    sys.meta_path.insert(0, BundleImporter(archive, zip_file))
    from runtime.cli import main as run_command_line
    return run_command_line(sys.argv[1:], bundle=(archive, zip_file))


sys.exit(main())
