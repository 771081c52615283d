"""What every node's console script does: loopback DDS, init, spin, clean shutdown.

``main = node_main(MyNode)`` gives a console-script entry that

1. puts the loopback-only Fast DDS environment in place (:func:`use_loopback_env`) and checks it
   (:func:`require_loopback_env`) before ``rclpy.init``, so no process of ours talks DDS on
   another interface;
2. initialises rclpy with ``sys.argv`` (``--ros-args -p ... --params-file ... -r ...`` work);
3. builds the node; a bad parameter given at start (InputError) is one log line and exit 2;
4. spins a multi-threaded executor until SIGINT/SIGTERM (rclpy's signal handlers shut the
   context down) and then destroys the node and shuts rclpy down, exit 0.
"""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Callable, Sequence

from weak_template_ros.errors import InputError
from weak_template_ros.ros.loopback import require_loopback_env, use_loopback_env


def run_node(make_node: Callable[..., object], args: Sequence[str] | None = None,
             num_threads: int | None = None) -> int:
    """Run one node to completion; returns the process exit status (0 ok, 2 bad input).

    Parameters
    ----------
    make_node : callable
        ``make_node()`` returns the rclpy Node (usually the node class itself).
    args : sequence of str, optional
        Command line (default ``sys.argv``); ROS arguments after ``--ros-args``.
    num_threads : int, optional
        Executor threads (default: rclpy's choice, the CPU count).
    """
    use_loopback_env()
    require_loopback_env()
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=list(sys.argv if args is None else args))
    node = None
    status = 0
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=num_threads)
        executor.add_node(node)
        try:
            executor.spin()
        finally:
            stop_executor(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except InputError as e:  # a bad parameter or source given at start: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        status = 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return status


def stop_executor(executor) -> None:
    """Stop ``executor`` and wait until no callback of it runs any more.

    rclpy Jazzy's ``Executor.shutdown`` does not wait for running callbacks (it tests its
    shutdown flag right after setting it) and ``MultiThreadedExecutor`` leaves its thread pool
    running: a node destroyed while a pool thread is still inside a callback crashed the aligner
    with SIGSEGV on SIGINT (seen in CI). So the pool is shut down and joined here, queued
    callbacks cancelled, before the caller destroys the node.
    """
    executor.shutdown(timeout_sec=0)
    pool = getattr(executor, "_executor", None)  # MultiThreadedExecutor's ThreadPoolExecutor
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def node_main(make_node: Callable[..., object], num_threads: int | None = None) -> Callable[[], None]:
    """A console-script entry point ``main()`` running ``make_node`` (exits with its status)."""

    def main() -> None:
        faulthandler.enable()  # a crash in a C extension prints the Python stacks of every thread
        sys.exit(run_node(make_node, num_threads=num_threads))

    main.__doc__ = f"Run {getattr(make_node, '__name__', 'the node')} (console script entry)."
    return main
