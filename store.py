"""The model store: files fetched or saved into a model folder, whole or not at all, one process at a time.

A download never leaves a file that looks whole but is not: bytes go to a ".part" file that is
renamed into place only once its length (and MD5, where the server sends one) is right, and an
interrupted download resumes where it stopped. A file found damaged later (say, a copy cut off
by hand) is set aside and fetched again (set_aside). Processes that start at once on the same
folder take turns (folder_lock).

A save (save_files) replaces several files at once, so that a process killed at any moment leaves
the previous save or the new one, never a mix. The new files are written into the folder
`.saving` inside the model folder and synced; then a commit record `.saving/.commit`, listing
them, appears in one rename: that is the moment the save happens. Only then are the files moved
into place. A save cut short before its commit is deleted; one cut short after it is moved into
place. finish_interrupted_save does either, and every reader and writer of a folder calls it
first (settled_folder).

Every error a user can meet here is an OSError or ValueError with a message that says what to do.
"""
import base64
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time

BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
MODEL_SIZES = ("124M", "355M", "774M", "1558M")
DATA_FILE = "model.ckpt.data-00000-of-00001"
INDEX_FILE = "model.ckpt.index"
# What a model folder needs: the weights, their index, the shape and the vocabulary.
REQUIRED_FILES = ("hparams.json", "encoder.json", "vocab.bpe", INDEX_FILE, DATA_FILE)
# What OpenAI publishes: also `checkpoint` (which names the prefix) and model.ckpt.meta (the TF
# graph). Neither is read here, but a download brings all seven, so the folder stays TensorFlow's.
FILENAMES = ("checkpoint", "encoder.json", "hparams.json", DATA_FILE, INDEX_FILE, "model.ckpt.meta", "vocab.bpe")
LOCK_FILE = ".lock"  # held while a process fetches, checks or saves the folder's files
SAVING_DIR = ".saving"  # a save's new files, until they are in place
COMMIT_FILE = ".commit"  # in SAVING_DIR: the save is whole; the names of its files
LOCK_HELD = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}  # what flock and msvcrt say when another process has it
RETRIES = 3  # failed tries in a row before giving up, waiting 0.5, 1, 2 s between them
CHUNK = 1 << 20


def base_url():
    return os.environ.get("GPT2_BASE_URL", BASE_URL).rstrip("/")


def where_else(path):
    """The end of every download error: where else the file can come from."""
    mirror = os.environ.get("GPT2_BASE_URL")
    other = f"check GPT2_BASE_URL ({mirror})" if mirror else "set GPT2_BASE_URL to a mirror with the same layout"
    return f"{other}, or copy the file to {path} by hand"


class RetryableError(Exception):
    """A failure that another try may not have: lost connection, 5xx, a short body."""


class DamagedFile(ValueError):
    """A model file that is there but not whole or not right; the loader sets it aside and
    fetches it again. resumable: it looks like a cut-off copy, whose rest a Range request gets."""

    def __init__(self, path, problem, resumable=False):
        super().__init__(f"{path} {problem}")
        self.path, self.resumable = path, resumable


def download_file(url, path):
    """Download url to path, trying again after lost connections and server errors.

    Bytes go to path + ".part", renamed into place only when complete, so an interrupted
    download never looks whole; the next call resumes the .part where the server allows.
    A try that got some bytes starts the count of failures afresh: a long download over a
    flaky network goes on for as long as it makes progress."""
    import requests

    failures = 0
    while True:
        had = part_size(path)
        try:
            return fetch(url, path)
        except (RetryableError, requests.ConnectionError, requests.Timeout) as e:
            failures = 1 if part_size(path) > had else failures + 1
            if failures > RETRIES:
                again = "Run again to resume" if part_size(path) else "Check the network and run again"
                raise OSError(f"could not download {url} ({short_reason(e)}). {again}, or {where_else(path)}") from None
            wait = 0.5 * 2 ** (failures - 1)
            print(f"{os.path.basename(path)}: {short_reason(e)}; trying again in {wait:g} s", file=sys.stderr)
            time.sleep(wait)
        except requests.RequestException as e:  # not worth another try: a malformed GPT2_BASE_URL, say
            raise OSError(f"could not download {url} ({short_reason(e)}): {where_else(path)}") from None


def part_size(path):
    part = path + ".part"
    return os.path.getsize(part) if os.path.exists(part) else 0


def short_reason(e):
    """The useful end of an exception's text: requests nests "[Errno 111] Connection refused"
    several layers deep."""
    text = str(e)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno[1].strip().rstrip(".")
    if isinstance(e, RetryableError) or len(text) < 120:
        return text or type(e).__name__
    return type(e).__name__


def fetch(url, path):
    """One try at downloading url to path, continuing path + ".part" if the server takes a Range."""
    import requests

    part, have = path + ".part", part_size(path)
    headers = {"Accept-Encoding": "identity"}  # the bytes on disk must be the file's own bytes
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=headers, stream=True, timeout=(10, 60)) as r:
        if r.status_code == 416 and have and part_is_whole(url, part, have):
            os.replace(part, path)  # a crash came between its last write and its rename
            return
        have = resume_point(r, url, path, have)
        length = r.headers.get("Content-Length", "")
        total = have + int(length) if length.isdigit() else None
        # Azure sends the whole file's MD5 (base64) as Content-MD5 with the whole file, and as
        # x-ms-blob-content-md5 with a range of it.
        md5 = r.headers.get("x-ms-blob-content-md5") or (r.headers.get("Content-MD5") if r.status_code == 200 else None)
        digest = hashlib.md5()
        if md5 and have:
            add_file_to_digest(digest, part)  # the bytes from earlier tries count too
        write_body(r, part, have, total, digest, f"Fetching {os.path.basename(path)}")
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise RetryableError(f"got {size:,} of {total:,} bytes")
    if md5 and base64.b64encode(digest.digest()).decode() != md5:
        os.remove(part)  # which bytes are wrong is unknown: only a fresh download can fix it
        raise RetryableError("the downloaded bytes do not match the server's Content-MD5")
    os.replace(part, path)


def resume_point(r, url, path, have):
    """Where the response's body goes in path's .part of `have` bytes: after them for a 206 that
    continues it, at 0 for a 200 (the server sent the whole file). RetryableError or OSError for
    any other answer."""
    if r.status_code >= 500:
        raise RetryableError(f"server error {r.status_code}")
    if r.status_code == 416 or (r.status_code == 206 and
                                not r.headers.get("Content-Range", "").startswith(f"bytes {have}-")):
        if have:
            os.remove(path + ".part")  # as long as the file already, or longer, or not what was asked
        raise RetryableError("the partial download does not fit the server's file; starting over")
    if r.status_code not in (200, 206):
        raise OSError(f"could not download {url}: HTTP {r.status_code} {r.reason}. Check the address, "
                      f"or {where_else(path)}")
    return have if r.status_code == 206 else 0


def write_body(r, part, have, total, digest, desc):
    """Write the response's body to part after its first `have` bytes, adding it to digest, with a
    progress bar, and on disk (fsync) before this returns."""
    import requests
    from tqdm import tqdm

    with open(part, "ab" if have else "wb") as f, \
            tqdm(desc=desc, total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                 leave=False, dynamic_ncols=True) as bar:
        try:
            for chunk in r.iter_content(CHUNK):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())  # on disk before it is renamed, should the machine go down
        except requests.RequestException:
            of_total = f" of {total:,}" if total is not None else ""
            raise RetryableError(f"connection lost after {f.tell():,}{of_total} bytes") from None
        except OSError as e:  # the disk is full, say: the .part stays, to resume later
            raise OSError(f"could not write {part}: {e.strerror or e}") from None


def part_is_whole(url, part, have):
    """Whether a .part that the server will not extend (416) is the whole file: as long as the
    server's copy, with the same MD5 where the server gives one."""
    import requests

    r = requests.head(url, headers={"Accept-Encoding": "identity"}, allow_redirects=True, timeout=(10, 60))
    if r.status_code != 200 or r.headers.get("Content-Length") != str(have):
        return False
    md5 = r.headers.get("Content-MD5")
    if md5:
        digest = hashlib.md5()
        add_file_to_digest(digest, part)
        return base64.b64encode(digest.digest()).decode() == md5
    return True


def add_file_to_digest(digest, path):
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)


def download_gpt2_files(model_size, model_dir):
    """Fetch those of OpenAI's seven files for model_size that model_dir does not have yet,
    resuming any left cut off, unless it has the five that are read (REQUIRED_FILES): a folder
    copied in by hand, or a fine-tuned one, needs no `checkpoint` or `.meta`. The small files
    that are read come first (an error names one the loader needs), the big data file last, so
    that a mirror without one of the small files is found out before a long download, not after."""
    check_model_size(model_size)
    os.makedirs(model_dir, exist_ok=True)
    if all(os.path.isfile(os.path.join(model_dir, name)) for name in REQUIRED_FILES):
        return
    for filename in sorted(FILENAMES, key=lambda name: (name == DATA_FILE, name not in REQUIRED_FILES)):
        path = os.path.join(model_dir, filename)
        if not os.path.isfile(path):
            download_file(f"{base_url()}/{model_size}/{filename}", path)


def check_model_size(model_size):
    if model_size not in MODEL_SIZES:  # also keeps anything like "../x" out of file paths
        raise ValueError(f"unknown model size {model_size!r}: choose one of {', '.join(MODEL_SIZES)}")


@contextlib.contextmanager
def folder_lock(model_dir):
    """Hold model_dir's lock file while fetching or checking its files, so that two processes
    started at once (a notebook and a shell, say) take turns: the second waits, then finds the
    files whole. The operating system drops a lock when its process ends, however it ends, so a
    lock left by a killed process blocks no one."""
    path = os.path.join(model_dir, LOCK_FILE)
    fd = take_lock(path, model_dir)
    try:
        yield
    finally:
        try:
            with contextlib.suppress(OSError):
                os.remove(path)  # while still locked, so that anyone waiting on it sees it is gone
        finally:  # even if a second Ctrl-C lands here: a lock left open would block this process itself
            if fd is not None:
                os.close(fd)


def take_lock(path, model_dir):
    """A descriptor of the lock file at path, locked by this process, once no other holds it.
    None where there is nothing to lock: a folder that cannot be written (shared read-only, say)
    that no one can change from here, or a file system without locks (NFS without lockd, some
    FUSE and SMB mounts), where waiting would be forever."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            if not try_lock(fd):
                print(f"waiting for another process to finish with {model_dir} (it holds {path})", file=sys.stderr)
                while not try_lock(fd):
                    time.sleep(0.1)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass  # the process before us removed the file we waited on: lock the new one
        except OSError as e:
            os.close(fd)
            print(f"note: {path} cannot be locked on this file system ({e.strerror or e}); going on without "
                  "the lock, so start no second run on this folder until this one is done", file=sys.stderr)
            return None
        os.close(fd)


def try_lock(fd):
    """Take the lock on an open file: True, or False if another process holds it. OSError if the
    file system cannot lock files at all."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in LOCK_HELD:
            return False
        raise


def set_aside(path, resume):
    """Out of the way of the next download: renamed to its .part if resume, otherwise deleted."""
    part = path + ".part"
    if resume:
        os.replace(path, part)  # a cut-off copy is the file's start: a Range request fetches the rest
    else:
        os.remove(path)
        if os.path.exists(part):
            os.remove(part)


# ---------------------------------------------------------------------------------------------
# Saves: several files replaced at once

def save_files(model_dir, write, stale=()):
    """Replace files of model_dir (made if needed) all at once: write(folder) writes the new
    files into an empty folder; once it returns, they take the place of the files of the same
    names in model_dir, or, if the process dies first, none does. Files of model_dir that the
    save does not write are left as they are, except the names in `stale` (records about the
    old files, such as a checksum marker), deleted before anything is written."""
    os.makedirs(model_dir, exist_ok=True)
    with settled_folder(model_dir):
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(model_dir, name))
        saving = os.path.join(model_dir, SAVING_DIR)
        os.mkdir(saving)
        try:
            write(saving)
            commit(saving)
        except BaseException:  # Ctrl-C or a full disk: nothing has moved yet, so the old save stands
            shutil.rmtree(saving, ignore_errors=True)
            raise
        finish_interrupted_save(model_dir)  # moves the files into place, as after a crash


def commit(saving):
    """Sync every file written into the folder `saving`, then record their names in its commit
    record, which appears whole or not at all (written under another name, then renamed)."""
    names = sorted(os.listdir(saving))
    for name in names:
        check_file_name(name)
        sync_file(os.path.join(saving, name))
    sync_folder(saving)
    record = os.path.join(saving, COMMIT_FILE)
    with open(record + ".tmp", "w", encoding="utf-8") as f:
        json.dump(names, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(record + ".tmp", record)
    sync_folder(saving)


def finish_interrupted_save(model_dir):
    """Leave model_dir holding one whole save after a process died saving into it: a save that
    had committed is moved into place (what is left of it), one that had not is deleted. Safe to
    run again, or to be killed in: each step leaves a state it finishes from. The caller holds
    folder_lock(model_dir) (settled_folder does both)."""
    saving = os.path.join(model_dir, SAVING_DIR)
    if not os.path.isdir(saving):
        return
    names = committed_names(saving)
    if names is not None:
        for name in names:
            new = os.path.join(saving, name)
            if os.path.exists(new):  # not moved yet
                os.replace(new, os.path.join(model_dir, name))
        sync_folder(model_dir)
        os.remove(os.path.join(saving, COMMIT_FILE))
    shutil.rmtree(saving)


def committed_names(saving):
    """The file names in the commit record of the folder `saving`, or None if it has none."""
    record = os.path.join(saving, COMMIT_FILE)
    try:
        with open(record, encoding="utf-8") as f:
            names = json.load(f)
        if not isinstance(names, list):
            raise ValueError
        for name in names:
            check_file_name(name)
    except FileNotFoundError:
        return None
    except ValueError:  # only damage to the disk can make it so: a record appears whole or not at all
        raise ValueError(f"{record} is damaged, so it is unknown whether the save in {saving} is whole: look at "
                         f"its files, move them into {os.path.dirname(saving)} or delete them, then delete "
                         f"{saving}") from None
    return names


@contextlib.contextmanager
def settled_folder(model_dir):
    """folder_lock(model_dir), then any save cut short in it finished: how every reader and
    writer of a model folder begins."""
    with folder_lock(model_dir):
        finish_interrupted_save(model_dir)
        yield


def check_file_name(name):
    """A save's files are plain names in the folder: no path, nothing hidden (the lock, the
    save's own folder and record)."""
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(f"{name!r} is not a plain file name (no folder, not starting with '.')")


def sync_file(path):
    """Make sure a file's bytes are on disk, not only in the operating system's cache."""
    fd = os.open(path, os.O_RDWR)  # Windows syncs only a file open for writing
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(path):
    """Make sure the names in a folder (files created, renamed, deleted) are on disk. Windows
    cannot open a folder to sync it (NTFS journals renames anyway); some file systems refuse."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
