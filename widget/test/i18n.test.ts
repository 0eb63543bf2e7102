import assert from "node:assert/strict";
import { test } from "node:test";
import { CATALOGUES, countryOptions, formatCount, guessCountry, localized, pickLang } from "../src/i18n";

test("numbers are written the reader's way", () => {
  assert.equal(formatCount(115100, "fr").replace(/\s/g, " "), "115 100");
  assert.match(formatCount(115100, "fr"), /^115[\u202f\u00a0]100$/);
  assert.equal(formatCount(115100, "en"), "115,100");
});

test("plurals follow each language's rule", () => {
  assert.equal(CATALOGUES.fr.signatures("0", 0), "0 signature");
  assert.equal(CATALOGUES.fr.signatures("1", 1), "1 signature");
  assert.equal(CATALOGUES.fr.signatures("2", 2), "2 signatures");
  assert.equal(CATALOGUES.en.signatures("0", 0), "0 signatures");
  assert.equal(CATALOGUES.en.signatures("1", 1), "1 signature");
});

test("the language: data-lang first, then the page's, then the browser's, else English", () => {
  assert.equal(pickLang("fr", "en"), "fr");
  assert.equal(pickLang(undefined, "fr-FR"), "fr");
  assert.equal(pickLang("", null, "en-US"), "en");
  assert.equal(pickLang("de", "ar"), "en");
});

test("every catalogue has every string", () => {
  const keys = (lang: "fr" | "en") => Object.keys(CATALOGUES[lang]).sort();
  assert.deepEqual(keys("fr"), keys("en"));
  assert.deepEqual(Object.keys(CATALOGUES.fr.invalid).sort(), Object.keys(CATALOGUES.en.invalid).sort());
  assert.deepEqual(Object.keys(CATALOGUES.fr.actions).sort(), Object.keys(CATALOGUES.en.actions).sort());
});

test("countries carry localised names, sorted for the reader", () => {
  const fr = countryOptions("fr");
  assert.equal(fr.length, 249);
  assert.deepEqual(fr.find(([code]) => code === "DE"), ["DE", "Allemagne"]);
  assert.deepEqual(countryOptions("en").find(([code]) => code === "DE"), ["DE", "Germany"]);
  const names = fr.map(([, name]) => name);
  assert.ok(names.indexOf("Égypte") < names.indexOf("Espagne"), "É sorts with E in French");
});

test("the preselected country comes from the browser's language region", () => {
  assert.equal(guessCountry(["fr-BE", "fr"]), "BE");
  assert.equal(guessCountry(["fr", "en-GB"]), "GB");
  assert.equal(guessCountry(["zh-Hant-TW"]), "TW");
  assert.equal(guessCountry(["fr"]), null);
});

test("a text in the reader's language, else the case's default", () => {
  assert.equal(localized({ fr: "Libérez-la", en: "Free her" }, "en", "fr"), "Free her");
  assert.equal(localized({ fr: "Libérez-la" }, "en", "fr"), "Libérez-la");
  assert.equal(localized(null, "en", "fr"), "");
});
