"""Run the command-line tools as subprocesses, several at a time (the machine has 2 cores)."""
import contextlib
import importlib.util
import os
import os.path as osp
import signal
import socket
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools')
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def subprocess_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable, **extra)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, env.get('PYTHONPATH')]))
    return env


def stop(proc) -> None:
    """End ``proc`` and the processes it started (its session), if it still runs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_together(commands: dict, cwd) -> dict:
    """Run the commands ({name: (argv, extra env)}) at the same time; their
    (returncode, stdout + stderr) by name."""
    with contextlib.ExitStack() as stack:
        procs = {}
        for name, (argv, extra) in commands.items():
            log = stack.enter_context(open(osp.join(cwd, f'{name}.out'), 'w+'))
            proc = subprocess.Popen(argv, cwd=cwd, env=subprocess_env(**extra), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            stack.callback(stop, proc)
            procs[name] = proc, log
        results = {}
        for name, (proc, log) in procs.items():
            code = proc.wait(timeout=TIMEOUT)
            log.seek(0)
            results[name] = code, log.read()
    return results


def succeeded(result) -> str:
    code, output = result
    assert code == 0, output[-5000:]
    return output


def python(script, *args):
    return [sys.executable, osp.join(TOOLS, script), *args]


def mim(*args):
    return [sys.executable, '-m', 'mim', *args]


def load_tool(name):
    """tools/<name>.py as a module (tools/test.py imports tools/train.py as ``train``)."""
    if name == 'train' and 'train' in sys.modules:
        return sys.modules['train']
    spec = importlib.util.spec_from_file_location(name, osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    if name == 'train':
        sys.modules['train'] = module
    else:
        load_tool('train')
    spec.loader.exec_module(module)
    return module
