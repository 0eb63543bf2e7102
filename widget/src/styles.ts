// The widget's styles, inside its shadow root: nothing leaks out, the page's rules do
// not reach in.  The page's rules still style the host element itself (they beat
// `:host`), so fonts and colours are set on the inner box, not inherited from the host.  Campaigners may
// set `--clameur-accent` on the page (custom properties cross the shadow boundary).
//
// Under a strict CSP (`style-src` without 'unsafe-inline') a <style> element is refused,
// but a constructed stylesheet is not: it is adopted where the browser can, and a
// <style> is the fallback for browsers without constructable stylesheets.

export const CSS = `
:host{all:initial;display:block;--accent:var(--clameur-accent,#1f3fbf)}
*{box-sizing:border-box}
.box{margin:0 0 1rem;font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;font-size:16px;line-height:1.5;color:#1a1a1a;text-align:start;background:#fff;border:1px solid #c4c4c4;border-radius:10px;padding:1rem 1.1rem;max-width:38rem}
h2{font-size:1.3rem;line-height:1.25;margin:0 0 .6rem}
h3{font-size:1.15rem;margin:0 0 .4rem}
p{margin:0 0 .6rem}
.count{font-size:1.05rem;margin:0 0 .35rem}
.count strong{font-size:1.6rem;font-weight:800;margin-right:.2rem}
.bar{height:.75rem;background:#e2e2e2;border-radius:.4rem;overflow:hidden;border:1px solid #767676}
.fill{height:100%;width:0;background:var(--accent);transition:width .5s ease}
.next[hidden]{display:none}
.next{font-size:.9rem;color:#4a4a4a;margin:.3rem 0 0}
.counter{margin-bottom:.9rem}
.counter:last-child{margin-bottom:0}
form{display:flex;flex-wrap:wrap;gap:.75rem 1rem}
.field{flex:1 1 100%;min-width:0}
.half{flex:1 1 13rem}
label{display:block;font-weight:600;margin-bottom:.2rem}
.req{font-weight:400;color:#4a4a4a;font-size:.85rem}
input,select,button{font:inherit;color:inherit}
input[type=text],input[type=email],select{display:block;width:100%;min-height:2.75rem;padding:.5rem .65rem;border:1px solid #6b6b6b;border-radius:6px;background:#fff}
[aria-invalid=true]{border:2px solid #b00020!important}
.check{display:flex;gap:.6rem;align-items:flex-start}
.check input{width:1.35rem;height:1.35rem;margin:.15rem 0 0;flex:none;accent-color:var(--accent)}
.check label{font-weight:400;margin:0}
button{width:100%;min-height:3rem;border:0;border-radius:6px;background:var(--accent);color:#fff;font-weight:700;font-size:1.05rem;cursor:pointer;padding:.6rem 1rem}
button[disabled]{opacity:.75;cursor:progress}
:focus-visible{outline:3px solid #1a1a1a;outline-offset:2px;box-shadow:0 0 0 5px #fff}
.error{color:#b00020;font-size:.9rem;margin:.25rem 0 0}
.error:empty{display:none}
.status{flex:1 1 100%;margin:0}
.status:empty{display:none}
.status.problem{background:#fdecea;color:#6b0012;border-left:4px solid #b00020;padding:.5rem .7rem;border-radius:4px}
.status.busy{background:#fff6d6;color:#4d3900;border-left:4px solid #8a6500;padding:.5rem .7rem;border-radius:4px}
.done{border-left:5px solid #1b6e2a;padding:.4rem .8rem;background:#eef7ef}
.ended{border-left:5px solid #1b6e2a;padding:.4rem .8rem;background:#eef7ef}
.ended.closed{border-color:#555;background:#f2f2f2}
.victory{color:#14531f}
.hp{position:absolute;left:-10000px;top:auto;width:1px;height:1px;overflow:hidden}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
`;

export function applyStyles(root: ShadowRoot): void {
  try {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    root.adoptedStyleSheets = [sheet];
  } catch {
    const style = document.createElement("style");
    style.textContent = CSS;
    root.appendChild(style);
  }
}
