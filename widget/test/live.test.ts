import assert from "node:assert/strict";
import { test } from "node:test";
import { type CaseDocument, mergeCount } from "../src/live";

const DOC: CaseDocument = {
  id: "nawal",
  title: { fr: "Nawal" },
  status: "open",
  goal: 100,
  milestones: [10],
  actions: ["signature"],
  locales: ["fr"],
  default_locale: "fr",
  total: 3,
};

test("a count event moves the total; a new status asks for the whole document", () => {
  assert.deepEqual(mergeCount(DOC, { total: 7, status: "open" }), { next: { ...DOC, total: 7 }, refetch: false });
  const won = mergeCount(DOC, { total: 7, status: "won" });
  assert.equal(won.refetch, true);
  assert.equal(won.next.status, "won");
  assert.equal(DOC.total, 3, "the old document is left as it was");
});
