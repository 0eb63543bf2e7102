// Every string the widget shows, one catalogue per language, and the reader's formats.
// A catalogue is a plain object of the same shape (the `Catalogue` type keeps them in step).

export type Lang = "fr" | "en";
export const LANGS: readonly Lang[] = ["fr", "en"];

export interface Catalogue {
  /** `count` is `n` written the reader's way. */
  signatures: (count: string, n: number) => string;
  nextMilestone: (target: string) => string;
  goal: (target: string) => string;
  goalReached: string;
  progressLabel: string;
  firstName: string;
  lastName: string;
  email: string;
  country: string;
  chooseCountry: string;
  postalCode: string;
  action: string;
  actions: Record<string, string>;
  consent: string;
  submit: string;
  sending: string;
  required: string;
  honeypot: string;
  thanksTitle: string;
  thanksText: string;
  confirmTitle: string;
  confirmText: string;
  victoryLead: string;
  noNeed: string;
  closed: string;
  unknownCase: string;
  loading: string;
  invalid: Record<string, string>;
  fixFields: string;
  busyRetrying: (seconds: number) => string;
  busyGaveUp: string;
  networkDown: string;
  refused: string;
  humanCheck: string;
}

const fr: Catalogue = {
  signatures: (count, n) => `${count} signature${n < 2 ? "" : "s"}`,
  nextMilestone: (target) => `Prochain objectif : ${target}`,
  goal: (target) => `Objectif : ${target}`,
  goalReached: "Objectif atteint, merci !",
  progressLabel: "Progression vers l’objectif",
  firstName: "Prénom",
  lastName: "Nom",
  email: "Adresse e-mail",
  country: "Pays",
  chooseCountry: "Choisissez votre pays",
  postalCode: "Code postal",
  action: "Votre action",
  actions: {
    signature: "Signer la pétition",
    letter: "Envoyer une lettre",
    email: "Envoyer un e-mail",
    tweet: "Publier un message",
    postcard: "Envoyer une carte postale",
  },
  consent: "Je souhaite recevoir des nouvelles de ce cas par e-mail.",
  submit: "Je signe",
  sending: "Envoi en cours…",
  required: "obligatoire",
  honeypot: "Laissez ce champ vide",
  thanksTitle: "Merci, votre signature est enregistrée !",
  thanksText: "Partagez cette page pour que d’autres agissent aussi.",
  confirmTitle: "Presque fini : vérifiez votre boîte mail",
  confirmText: "Nous vous avons envoyé un e-mail. Cliquez sur son lien pour confirmer votre signature.",
  victoryLead: "Victoire !",
  noNeed: "Plus besoin d’agir : merci à toutes celles et ceux qui se sont mobilisés.",
  closed: "Cette pétition est close : elle ne reçoit plus de signatures.",
  unknownCase: "Cette pétition est introuvable. Vérifiez le réglage data-case du widget.",
  loading: "Chargement de la pétition…",
  invalid: {
    first_name: "Indiquez votre prénom (sans lien ni caractère spécial).",
    last_name: "Indiquez votre nom (sans lien ni caractère spécial).",
    email: "Indiquez une adresse e-mail valide, par exemple nom@exemple.fr.",
    country: "Choisissez votre pays dans la liste.",
    postal_code: "Vérifiez votre code postal.",
    consent: "Cochez ou décochez la case à nouveau.",
    action: "Choisissez une action dans la liste.",
  },
  fixFields: "Certains champs sont à corriger : voyez les messages sous chacun d’eux.",
  busyRetrying: (seconds) => `Beaucoup de monde signe en ce moment ; nouvel essai dans ${seconds} s…`,
  busyGaveUp: "Votre signature n’a pas pu être enregistrée pour l’instant. Réessayez dans une minute : rien n’a été perdu.",
  networkDown: "Pas de connexion : votre signature n’est pas partie. Vos réponses sont gardées ; réessayez une fois connecté.",
  refused: "Ce site ne peut pas envoyer de signatures pour l’instant. Prévenez l’équipe de la campagne.",
  humanCheck: "La vérification anti-robot a échoué ; refaites-la puis renvoyez.",
};

const en: Catalogue = {
  signatures: (count, n) => `${count} signature${n === 1 ? "" : "s"}`,
  nextMilestone: (target) => `Next milestone: ${target}`,
  goal: (target) => `Goal: ${target}`,
  goalReached: "Goal reached, thank you!",
  progressLabel: "Progress to the goal",
  firstName: "First name",
  lastName: "Last name",
  email: "Email address",
  country: "Country",
  chooseCountry: "Choose your country",
  postalCode: "Postal code",
  action: "Your action",
  actions: {
    signature: "Sign the petition",
    letter: "Send a letter",
    email: "Send an email",
    tweet: "Post a message",
    postcard: "Send a postcard",
  },
  consent: "I want to receive news about this case by email.",
  submit: "Sign",
  sending: "Sending…",
  required: "required",
  honeypot: "Leave this field empty",
  thanksTitle: "Thank you, your signature is saved!",
  thanksText: "Share this page so that others act too.",
  confirmTitle: "Almost done: check your inbox",
  confirmText: "We have sent you an email. Click its link to confirm your signature.",
  victoryLead: "Victory!",
  noNeed: "No need to act any more: thank you to everyone who took action.",
  closed: "This petition is closed: it no longer takes signatures.",
  unknownCase: "This petition cannot be found. Check the widget's data-case setting.",
  loading: "Loading the petition…",
  invalid: {
    first_name: "Enter your first name (no links or special characters).",
    last_name: "Enter your last name (no links or special characters).",
    email: "Enter a valid email address, such as name@example.org.",
    country: "Choose your country from the list.",
    postal_code: "Check your postal code.",
    consent: "Tick or untick the box again.",
    action: "Choose an action from the list.",
  },
  fixFields: "Some fields need fixing: see the message under each of them.",
  busyRetrying: (seconds) => `Many people are signing right now; trying again in ${seconds} s…`,
  busyGaveUp: "Your signature could not be saved just now. Try again in a minute: nothing was lost.",
  networkDown: "No connection: your signature was not sent. Your answers are kept; try again once you are online.",
  refused: "This site cannot send signatures right now. Please tell the campaign's team.",
  humanCheck: "The anti-robot check failed; please do it again and resend.",
};

export const CATALOGUES: Record<Lang, Catalogue> = { fr, en };

/** The widget's language: its data-lang, else the page's, else the browser's; English by default. */
export function pickLang(...candidates: (string | null | undefined)[]): Lang {
  for (const candidate of candidates) {
    const base = (candidate || "").trim().toLowerCase().split(/[-_]/)[0];
    if ((LANGS as readonly string[]).includes(base)) return base as Lang;
  }
  return "en";
}

/** A count in the reader's format ("115 100" in French, "115,100" in English). */
export function formatCount(value: number, lang: Lang): string {
  return new Intl.NumberFormat(lang === "fr" ? "fr-FR" : "en-GB").format(value);
}

// ISO 3166-1 alpha-2, as intake checks them (pycountry's list).
const CODES =
  "ADAEAFAGAIALAMAOAQARASATAUAWAXAZBABBBDBEBFBGBHBIBJBLBMBNBOBQBRBSBTBVBWBYBZCACCCDCFCGCHCICKCLCMCNCOCRCUCVCWCXCYCZDEDJDKDMDODZECEEEGEHERESETFIFJFKFMFOFRGAGBGDGEGFGGGHGIGLGMGNGPGQGRGSGTGUGWGYHKHMHNHRHTHUIDIEILIMINIOIQIRISITJEJMJOJPKEKGKHKIKMKNKPKRKWKYKZLALBLCLILKLRLSLTLULVLYMAMCMDMEMFMGMHMKMLMMMNMOMPMQMRMSMTMUMVMWMXMYMZNANCNENFNGNINLNONPNRNUNZOMPAPEPFPGPHPKPLPMPNPRPSPTPWPYQARERORSRURWSASBSCSDSESGSHSISJSKSLSMSNSOSRSSSTSVSXSYSZTCTDTFTGTHTJTKTLTMTNTOTRTTTVTWTZUAUGUMUSUYUZVAVCVEVGVIVNVUWFWSYEYTZAZMZW";
export const COUNTRY_CODES: readonly string[] = CODES.match(/../g) || [];

/** The countries as (code, name in `lang`), sorted by name the way a reader of `lang` sorts. */
export function countryOptions(lang: Lang): [string, string][] {
  let names: Intl.DisplayNames | null = null;
  try {
    names = new Intl.DisplayNames([lang], { type: "region" });
  } catch {
    names = null; // an old browser: codes alone still work
  }
  const options = COUNTRY_CODES.map((code): [string, string] => [code, (names && names.of(code)) || code]);
  const collator = new Intl.Collator(lang);
  return options.sort((a, b) => collator.compare(a[1], b[1]));
}

/** The country to preselect: the region of the first browser language that names one. */
export function guessCountry(languages: readonly string[]): string | null {
  for (const tag of languages) {
    const parts = tag.split(/[-_]/);
    for (const part of parts.slice(1)) {
      const code = part.toUpperCase();
      if (part.length === 2 && COUNTRY_CODES.includes(code)) return code;
    }
  }
  return null;
}

/** A text in `lang`, else the case's default locale, else any. */
export function localized(text: Record<string, string> | null | undefined, lang: string, fallback: string): string {
  if (!text) return "";
  return text[lang] || text[fallback] || Object.values(text)[0] || "";
}
