// The desk's page behaviour: drag-and-drop upload with progress, scan progress, corrections and the review queue.
"use strict";

function $(selector, root) { return (root || document).querySelector(selector); }

function reviewer() {
  const field = $("#reviewer");
  if (!field) return "";  // signed in: the server knows who
  return field.value.trim();
}

function site() {
  const field = $("#site");
  return field ? field.value.trim() : null;  // null: the desk's own --site
}

// One correction through the desk's correction path; the answer's JSON, or an Error with the desk's reason.
async function postCorrection(batch, number, body) {
  body.reviewer = reviewer();
  if ($("#reviewer") && !body.reviewer) throw new Error("Type your name in Reviewer first.");
  const where = site();
  if (where !== null) body.site = where;
  const response = await fetch(`/api/batches/${batch}/photos/${number}/corrections`, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`Not saved: ${answer.detail}`);
  const waiting = $("#waiting");
  waiting.textContent = `${answer.waiting} corrected tile(s) waiting for training. Retrain on them from the project folder: dvc update data.dvc && dvc repro`;
  return answer;
}

function setupUpload() {
  const form = $("#upload-form");
  if (!form) return;
  const input = $("#photos"), drop = $("#drop"), bar = $("#upload-progress"), message = $("#upload-message");
  ["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
    event.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    input.files = event.dataTransfer.files;
    message.textContent = `${input.files.length} photo(s) ready`;
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input.files.length) { message.textContent = "Choose or drop photos first."; return; }
    const data = new FormData();
    for (const file of input.files) data.append("photos", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", "/batches");
    request.setRequestHeader("Accept", "application/json");
    request.upload.onprogress = (e) => { if (e.lengthComputable) { bar.hidden = false; bar.value = 100 * e.loaded / e.total; } };
    request.onload = () => {
      let body = {};
      try { body = JSON.parse(request.responseText); } catch (e) { body = {detail: request.responseText}; }
      if (request.status === 201) { window.location = body.url; return; }
      bar.hidden = true;
      message.textContent = `Refused: ${body.detail || request.statusText}`;
      message.classList.add("error");
    };
    request.onerror = () => { message.textContent = "The upload failed: is the desk still running?"; };
    message.textContent = "Uploading…";
    request.send(data);
  });
}

function setupProgress() {
  const batch = $("#batch");
  if (!batch || batch.dataset.status === "done" || batch.dataset.status === "failed") return;
  const poll = async () => {
    const response = await fetch(`/api/batches/${batch.dataset.batch}`);
    const state = await response.json();
    const bar = $("#scan-progress");
    bar.max = state.tiles_total; bar.value = state.tiles_done;
    $("#progress-text").textContent = `${state.status}: ${state.tiles_done} of ${state.tiles_total} tiles, ${state.photos} photos`;
    if (state.status === "done" || state.status === "failed") { window.location.reload(); return; }
    setTimeout(poll, 400);
  };
  setTimeout(poll, 200);
}

async function sendCorrection(card, body) {
  const message = $(".message", card);
  message.classList.remove("error");
  let answer;
  try {
    answer = await postCorrection($("#batch").dataset.batch, card.dataset.number, body);
  } catch (error) {
    message.textContent = error.message; message.classList.add("error"); return;
  }
  message.textContent = `Saved: ${answer.written.length} tile(s) written, ${answer.duplicates} already in the field folder.`;
  const item = document.createElement("li");
  item.textContent = answer.note;
  $(".notes", card).appendChild(item);
}

// A review-queue tile: either button labels that tile alone (its own box), and a labelled tile leaves the queue.
function setupReviewTile(tile) {
  const batch = $("#review").dataset.batch, message = $(".message", tile);
  tile.querySelectorAll("button").forEach((button) => button.addEventListener("click", async () => {
    message.classList.remove("error");
    try {
      const box = tile.dataset.box.split(",").map(Number);
      const answer = await postCorrection(batch, tile.dataset.number, {kind: button.dataset.kind, box: box});
      message.textContent = `Saved: ${answer.written.length} tile(s) written to the field folder.`;
    } catch (error) {
      message.textContent = error.message; message.classList.add("error"); return;
    }
    tile.classList.add("done");
    setTimeout(() => {
      tile.remove();
      const left = document.querySelectorAll(".queue .tile").length;
      $("#review-count").textContent = `${left} tile(s) left on this page; reload for the next ones.`;
    }, 600);
  }));
}

// Where a pointer event falls on the photo, in photo pixels (null on the legend panel below it).
function photoPoint(card, image, event) {
  const rect = image.getBoundingClientRect();
  const x = (event.clientX - rect.left) * image.naturalWidth / rect.width;
  const y = (event.clientY - rect.top) * image.naturalHeight / rect.height;
  const pw = +card.dataset.pictureWidth, ph = +card.dataset.pictureHeight;
  if (x < 0 || y < 0 || x > pw || y > ph) return null;
  return {
    x: Math.min(+card.dataset.width - 1, Math.round(x * card.dataset.width / pw)),
    y: Math.min(+card.dataset.height - 1, Math.round(y * card.dataset.height / ph)),
    cx: event.clientX - rect.left, cy: event.clientY - rect.top,
  };
}

function setupCard(card) {
  card.querySelectorAll(".not-a-crack").forEach((button) => button.addEventListener("click",
    () => sendCorrection(card, {kind: "not_a_crack", region: +button.dataset.region})));
  card.querySelectorAll(".confirm").forEach((button) => button.addEventListener("click",
    () => sendCorrection(card, {kind: button.dataset.kind})));
  const image = $(".overlay", card), box = $(".draw-box", card), hint = $(".mark-hint", card);
  let marking = false, start = null;
  $(".mark-missed", card).addEventListener("click", () => {
    marking = !marking; hint.hidden = !marking; card.classList.toggle("marking", marking);
  });
  image.addEventListener("mousedown", (event) => {
    if (!marking) return;
    start = photoPoint(card, image, event);
    if (!start) return;
    event.preventDefault();
    Object.assign(box.style, {left: `${start.cx}px`, top: `${start.cy}px`, width: "0px", height: "0px"});
    box.hidden = false;
  });
  image.addEventListener("mousemove", (event) => {
    if (!marking || !start) return;
    const rect = image.getBoundingClientRect();
    const cx = event.clientX - rect.left, cy = event.clientY - rect.top;
    Object.assign(box.style, {left: `${Math.min(cx, start.cx)}px`, top: `${Math.min(cy, start.cy)}px`,
      width: `${Math.abs(cx - start.cx)}px`, height: `${Math.abs(cy - start.cy)}px`});
  });
  image.addEventListener("mouseup", (event) => {
    if (!marking || !start) return;
    const end = photoPoint(card, image, event) || start;
    const left = Math.min(start.x, end.x), top = Math.min(start.y, end.y);
    const right = Math.max(start.x, end.x) + 1, bottom = Math.max(start.y, end.y) + 1;
    start = null; marking = false; hint.hidden = true; card.classList.remove("marking");
    setTimeout(() => { box.hidden = true; }, 800);
    sendCorrection(card, {kind: "missed_crack", box: [left, top, right, bottom]});
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupUpload();
  setupProgress();
  document.querySelectorAll(".photo").forEach(setupCard);
  document.querySelectorAll(".queue .tile").forEach(setupReviewTile);
  const field = $("#reviewer");
  if (field) {
    field.value = localStorage.getItem("crackcls-reviewer") || "";
    field.addEventListener("change", () => localStorage.setItem("crackcls-reviewer", field.value.trim()));
  }
});
