// The labelling form's front end (sftlab.label_form): shows `view`, sends what the person did.
// Everything shown as text arrives escaped from Python; labels are written on the Python side only.

function render({ model, el }) {
  el.classList.add("sftlab-label-form");
  el.tabIndex = -1;
  // JupyterLab's command-mode shortcuts (1 = heading, Enter = edit, a/b = new cell) must not see the form's keys.
  el.setAttribute("data-lm-suppress-shortcuts", "true");
  el.innerHTML = `
    <div class="sftlab-fonts"></div>
    <div class="sftlab-head">
      <label>labeller <input class="sftlab-labeller" type="text" placeholder="your name (kept for next time)"></label>
      <span class="sftlab-count"></span>
    </div>
    <div class="sftlab-where"></div>
    <div class="sftlab-note sftlab-revising"></div>
    <div class="sftlab-item"></div>
    <div class="sftlab-criteria"></div>
    <div class="sftlab-actions">
      <button class="sftlab-back" title="←">← Back</button>
      <button class="sftlab-skip" title="→">Skip →</button>
      <button class="sftlab-save" title="Enter">Save &amp; next</button>
    </div>
    <div class="sftlab-status"></div>
    <div class="sftlab-reopen"><label>reopen a labelled answer <select></select></label></div>
    <div class="sftlab-keys"></div>`;
  const $ = (selector) => el.querySelector(selector);
  const labeller = $(".sftlab-labeller");
  const save = $(".sftlab-save");
  const reopen = $(".sftlab-reopen select");
  let focus = 0;

  const rows = () => [...el.querySelectorAll(".sftlab-criterion")];
  const criteria = () => model.get("view").criteria || [];
  const complete = () => {
    const values = model.get("values");
    const all = criteria();
    return all.length > 0 && all.every((c) => c.options.some((o) => o.value === values[c.key]))
      && labeller.value.trim() !== "";
  };
  const focusCriterion = (i) => {
    const all = rows();
    if (!all.length) return;
    focus = Math.max(0, Math.min(i, all.length - 1));
    all[focus].focus();
  };
  const setValue = (key, value) => {
    model.set("values", { ...model.get("values"), [key]: value });
    model.save_changes();
  };
  const send = (content) => model.send(content);
  const doSave = () => {
    if (!complete()) return;
    send({ action: "save", values: model.get("values"), labeller: labeller.value });
  };

  function showValues() {
    const values = model.get("values");
    for (const row of rows()) {
      const key = row.dataset.key;
      row.classList.toggle("sftlab-unset", !(key in values));
      for (const button of row.querySelectorAll("button")) {
        button.classList.toggle("sftlab-on", key in values && String(values[key]) === button.dataset.value);
      }
    }
    save.disabled = !complete();
    save.title = save.disabled ? "set every criterion (and your name) first" : "Enter";
  }

  function showView() {
    const view = model.get("view");
    const hadFocus = el.contains(document.activeElement) && document.activeElement !== labeller;
    $(".sftlab-where").textContent = view.where || "";
    $(".sftlab-revising").textContent = view.revising || "";
    $(".sftlab-item").innerHTML = view.html || "";  // escaped by the Python side
    const box = $(".sftlab-criteria");
    box.innerHTML = "";
    (view.criteria || []).forEach((c, i) => {
      const row = document.createElement("div");
      row.className = "sftlab-criterion";
      row.tabIndex = 0;
      row.dataset.key = c.key;
      row.title = c.description || "";
      const name = document.createElement("span");
      name.className = "sftlab-name";
      name.textContent = c.title;
      row.appendChild(name);
      for (const option of c.options) {
        const button = document.createElement("button");
        button.textContent = option.label;
        button.dataset.value = String(option.value);
        button.dataset.digit = option.digit;
        button.tabIndex = -1;
        button.addEventListener("click", () => { setValue(c.key, option.value); focusCriterion(i); });
        row.appendChild(button);
      }
      row.addEventListener("focus", () => { focus = i; });
      box.appendChild(row);
    });
    $(".sftlab-back").disabled = false;
    $(".sftlab-skip").disabled = !!view.done;
    showValues();
    if (hadFocus) focusCriterion(0);
  }

  function showReopen() {
    reopen.innerHTML = "";
    const head = document.createElement("option");
    head.textContent = `${model.get("reopenable").length} labelled`;
    head.value = "";
    reopen.appendChild(head);
    model.get("reopenable").forEach((text, position) => {
      const option = document.createElement("option");
      option.value = String(position);
      option.textContent = text;
      reopen.appendChild(option);
    });
  }

  const showCount = () => {
    const n = model.get("count");
    $(".sftlab-count").textContent = `${n} ${model.get("unit")} labelled so far`;
  };
  const showFonts = () => { $(".sftlab-fonts").innerHTML = model.get("fonts"); };

  el.addEventListener("keydown", (event) => {
    event.stopPropagation();  // the notebook's shortcuts stay out of the form
    const target = event.target;
    if (target.matches("input, select, textarea")) {
      if (event.key === "Enter" && target === labeller) {
        event.preventDefault();
        labeller.dispatchEvent(new Event("change"));
        focusCriterion(0);
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    let handled = true;
    if (/^[0-9]$/.test(event.key)) {
      const c = criteria()[focus];
      const option = c && c.options.find((o) => o.digit === event.key);
      if (option) {
        setValue(c.key, option.value);
        focusCriterion(focus + 1);
      }
    } else if (event.key === "Enter") {
      if (target.matches("button")) return;  // a focused button clicks itself
      doSave();
    } else if (event.key === "ArrowDown") {
      focusCriterion(focus + 1);
    } else if (event.key === "ArrowUp") {
      focusCriterion(focus - 1);
    } else if (event.key === "ArrowLeft") {
      send({ action: "back" });
    } else if (event.key === "ArrowRight") {
      if (!model.get("view").done) send({ action: "skip" });
    } else {
      handled = false;
    }
    if (handled) event.preventDefault();
  });
  labeller.addEventListener("input", showValues);
  labeller.addEventListener("change", () => { model.set("labeller", labeller.value); model.save_changes(); });
  save.addEventListener("click", doSave);
  $(".sftlab-back").addEventListener("click", () => send({ action: "back" }));
  $(".sftlab-skip").addEventListener("click", () => send({ action: "skip" }));
  reopen.addEventListener("change", () => {
    if (reopen.value !== "") send({ action: "reopen", position: Number(reopen.value) });
    reopen.value = "";
  });

  model.on("change:view", () => { showView(); showCount(); });
  model.on("change:values", showValues);
  model.on("change:count", showCount);
  model.on("change:status", () => { $(".sftlab-status").textContent = model.get("status"); });
  model.on("change:fonts", showFonts);
  model.on("change:reopenable", showReopen);
  model.on("change:labeller", () => { if (labeller.value !== model.get("labeller")) labeller.value = model.get("labeller"); showValues(); });

  labeller.value = model.get("labeller");
  $(".sftlab-keys").textContent = model.get("keyboard") || "";
  showFonts();
  showView();
  showCount();
  showReopen();
  $(".sftlab-status").textContent = model.get("status");
}

export default { render };
