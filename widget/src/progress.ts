// The goal ladder: progress towards the next milestone not yet passed, then to the goal.

export interface Progress {
  /** The number the bar is heading for. */
  target: number;
  /** Between 0 and 1. */
  ratio: number;
  kind: "milestone" | "goal" | "reached";
}

export function progressOf(total: number, milestones: readonly number[], goal: number): Progress {
  const next = [...milestones].filter((m) => m > total && m < goal).sort((a, b) => a - b)[0];
  if (next !== undefined) return { target: next, ratio: clamp(total / next), kind: "milestone" };
  if (goal > 0 && total < goal) return { target: goal, ratio: clamp(total / goal), kind: "goal" };
  return { target: goal, ratio: 1, kind: "reached" };
}

function clamp(value: number): number {
  return Math.max(0, Math.min(1, Number.isFinite(value) ? value : 0));
}
