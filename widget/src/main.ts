// Entry point: find the page's Clameur elements and mount a widget in each.
//
//   <div class="clameur-petition" data-case="nawal-benaissa" data-lang="fr" data-key="pk_…"></div>
//   <div class="clameur-counter" data-case="nawal-benaissa"></div>
//   <script src="https://intake.example/v1/widget.js" async></script>
//
// Intake is the script's own origin; the public reads (tally) are written into the
// bundle by intake when it serves it (the placeholder below), so the page names one URL.

import { pickLang } from "./i18n";
import { Petition, type WidgetConfig, mountCounter } from "./widget";

// Intake replaces this string when it serves the bundle (build.mjs checks it survives
// minification).  Served unreplaced (a bare build), the reads are asked of intake's origin.
const READS: string = "__CLAMEUR_READS_URL__";
const MOUNTED = "data-clameur-mounted";

function scriptOrigin(): string {
  const current = document.currentScript as HTMLScriptElement | null;
  const src = current?.src || (document.querySelector('script[src*="/v1/widget"]') as HTMLScriptElement | null)?.src || location.href;
  return new URL(src, location.href).origin;
}

function configOf(host: HTMLElement, intake: string): WidgetConfig | null {
  const caseId = (host.dataset.case || "").trim();
  if (!caseId) return null;
  const postal = host.dataset.postalCode;
  return {
    caseId,
    lang: pickLang(host.dataset.lang, document.documentElement.lang, navigator.language),
    widgetKey: host.dataset.key || null,
    intake,
    reads: /^https?:\/\//.test(READS) ? READS.replace(/\/$/, "") : intake,
    postalCode: postal === "required" || postal === "optional" ? postal : null,
    turnstileSiteKey: host.dataset.turnstile || null,
    widgetName: host.dataset.widget || null,
  };
}

function mountAll(intake: string): void {
  for (const host of Array.from(document.querySelectorAll<HTMLElement>(".clameur-petition, .clameur-counter"))) {
    if (host.hasAttribute(MOUNTED)) continue;
    const config = configOf(host, intake);
    if (!config) continue;
    host.setAttribute(MOUNTED, "");
    if (host.classList.contains("clameur-petition")) new Petition(host, config);
    else mountCounter(host, config);
  }
}

const intake = scriptOrigin();
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => mountAll(intake));
else mountAll(intake);
// Pages that add widgets later (single-page sites) get them mounted too, looked for at
// most once a frame however busy the page's own DOM is.
let looking = false;
new MutationObserver(() => {
  if (looking) return;
  looking = true;
  requestAnimationFrame(() => {
    looking = false;
    mountAll(intake);
  });
}).observe(document.documentElement, { childList: true, subtree: true });
