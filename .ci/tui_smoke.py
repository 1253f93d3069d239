"""CI: the installed wheel's TUI opens the bundled demo pair headless (the bare `surgeon tui`
pair), hashes and diffs it, and runs the canary on it, which fails as the demo says."""

import asyncio

from surgeon.tui.app import SurgeonApp

from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL


async def settle(app, pilot) -> None:
    for _ in range(1200):
        await asyncio.gather(*(worker.wait() for worker in app.workers), return_exceptions=True)
        await pilot.pause()
        if app.job is None:
            return
    raise SystemExit("tui: a job never finished")


async def main() -> None:
    app = SurgeonApp(DEMO_MODEL, DEMO_CANDIDATE)  # the demo's own prompts and text, by default
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        overview = app.export_screenshot()
        await pilot.press("c")  # the canary of the plan: every layer kept, so it fails
        await settle(app, pilot)
        canary = app.export_screenshot()
        await pilot.press("q")
    if "differ" not in overview or "FAILED" not in canary or "prompts.txt" not in canary:
        raise SystemExit("tui: the demo pair's diff, or its canary on the demo's prompts, is not on screen")
    print("tui: the demo pair opened, diffed, and its canary failed, from the installed wheel")


asyncio.run(main())
