import assert from "node:assert/strict";
import { test } from "node:test";
import { progressOf } from "../src/progress";

test("the bar heads for the next milestone not yet passed", () => {
  assert.deepEqual(progressOf(250, [1000, 2500, 5000], 20000), { target: 1000, ratio: 0.25, kind: "milestone" });
  assert.deepEqual(progressOf(1000, [2500, 1000], 20000), { target: 2500, ratio: 0.4, kind: "milestone" });
});

test("after the last milestone, the goal; then reached", () => {
  assert.deepEqual(progressOf(10000, [1000, 5000], 20000), { target: 20000, ratio: 0.5, kind: "goal" });
  assert.deepEqual(progressOf(25000, [1000], 20000), { target: 20000, ratio: 1, kind: "reached" });
  assert.equal(progressOf(0, [], 0).kind, "reached");
});

test("a milestone at or above the goal is the goal", () => {
  assert.equal(progressOf(10, [100], 100).kind, "goal");
});
