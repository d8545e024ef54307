// The queue page: it calls the queue's API under api/, relative to the
// page. Requests that change something carry Smtp-Queue-Request.
"use strict";

const api = (path, opts = {}) => {
	opts.headers = Object.assign({}, opts.headers || {});
	if (opts.method && opts.method !== "GET") {
		opts.headers["Smtp-Queue-Request"] = "1";
	}
	return fetch("api/" + path, opts).then(async (resp) => {
		const text = await resp.text();
		let body = {};
		try { body = text ? JSON.parse(text) : {}; } catch (e) { body = { error: text }; }
		if (!resp.ok) {
			throw new Error(body.error || resp.statusText);
		}
		return body;
	});
};

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
	const e = document.createElement(tag);
	for (const [k, v] of Object.entries(attrs)) {
		if (k === "class") e.className = v;
		else if (k.startsWith("data-")) e.setAttribute(k, v);
		else e[k] = v;
	}
	for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
	return e;
};

const say = (text, error = false) => {
	const m = $("#message");
	m.textContent = text;
	m.className = error ? "error" : "";
};

const filterQuery = () => {
	const q = new URLSearchParams();
	for (const [k, v] of new FormData($("#filters"))) {
		if (v) q.set(k, v);
	}
	return q;
};

const lastError = (r) => r.last_detail || (r.last_reply ? `${r.last_reply.code} ${r.last_reply.enhanced || ""} ${(r.last_reply.lines || []).join(" ")}` : "");

let cursor = "";

async function loadMessages(append = false) {
	const q = filterQuery();
	q.set("limit", "100");
	if (append && cursor) q.set("cursor", cursor);
	const body = await api("?" + q.toString());
	const tbody = $("#messages tbody");
	if (!append) tbody.replaceChildren();
	for (const m of body.messages) {
		const open = m.recipients.filter((r) => r.state !== "delivered");
		const err = open.map(lastError).find((e) => e) || m.hold_reason || "";
		const actions = el("td", { class: "actions" },
			...["retry", "hold", "release", "bounce", "delete"].map((a) =>
				el("button", { type: "button", "data-action": a, "data-id": m.id, title: a }, a)));
		tbody.append(el("tr", { class: m.state, "data-id": m.id },
			el("td", {}, el("a", { class: "id", href: "#" + m.id, "data-show": m.id }, m.id)),
			el("td", { class: "state" }, m.state),
			el("td", {}, m.from || "<>"),
			el("td", {}, open.map((r) => r.addr).join(", ")),
			el("td", { class: "num" }, String(m.size)),
			el("td", {}, m.age),
			el("td", { class: "err" }, err),
			actions));
	}
	cursor = body.next;
	$("#more").hidden = !cursor;
}

async function loadSummary() {
	const s = await api("summary");
	const tbody = $("#summary tbody");
	tbody.replaceChildren();
	for (const d of s.destinations) {
		tbody.append(el("tr", {},
			el("td", {}, d.destination + (d.suspended ? " (suspended)" : "")),
			el("td", { class: "num" }, String(d.messages)),
			...d.ages.map((n) => el("td", { class: "num" }, String(n))),
			el("td", { class: "err" }, d.last_error || "")));
	}
}

async function loadHolds() {
	const h = await api("holds");
	const tbody = $("#holds tbody");
	tbody.replaceChildren();
	for (const r of h.holds) {
		tbody.append(el("tr", {},
			el("td", {}, r.id), el("td", {}, r.sender_domain || "–"), el("td", {}, r.recipient_domain || "–"),
			el("td", {}, r.destination || "–"), el("td", {}, r.expires ? new Date(r.expires).toLocaleString() : "never"),
			el("td", {}, r.comment || ""),
			el("td", {}, el("button", { type: "button", "data-unhold": r.id }, "remove"))));
	}
}

async function refresh() {
	try {
		await Promise.all([loadMessages(), loadSummary(), loadHolds()]);
	} catch (e) {
		say(e.message, true);
	}
}

async function act(path, method = "POST") {
	try {
		const res = await api(path, { method });
		say(`${res.touched} message${res.touched === 1 ? "" : "s"}` + (res.deferred ? ` (${res.deferred} when their attempt ends)` : ""));
		await refresh();
	} catch (e) {
		say(e.message, true);
	}
}

async function show(id) {
	try {
		const m = await api(id);
		$("#detail").hidden = false;
		$("#detail-id").textContent = id;
		$("#detail-raw").href = "api/" + id + "/body";
		const lines = [`state: ${m.state}`, `from: ${m.from || "<>"}`, `size: ${m.size}`, `arrived: ${new Date(m.arrived).toLocaleString()} (${m.age} ago)`];
		if (m.hold_reason) lines.push(`held: ${m.hold_reason}`);
		if (m.next_attempt) lines.push(`next attempt: ${new Date(m.next_attempt).toLocaleString()}`);
		for (const r of m.recipients) {
			lines.push("", `${r.addr}: ${r.state}, ${r.attempts} attempt(s)` + (r.next_attempt ? `, next ${new Date(r.next_attempt).toLocaleString()}` : ""));
			for (const a of r.attempts_made || []) {
				const what = a.reply ? `${a.reply.code} ${a.reply.enhanced || ""} ${(a.reply.lines || []).join(" ")}` : a.error || "";
				lines.push(`  ${new Date(a.at).toLocaleString()}  ${a.host || ""} ${a.address || ""}  ${what}`);
			}
		}
		$("#detail-body").textContent = lines.join("\n");
	} catch (e) {
		say(e.message, true);
	}
}

document.addEventListener("DOMContentLoaded", () => {
	$("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadMessages().catch((e) => say(e.message, true)); });
	$("#filters").addEventListener("reset", () => setTimeout(() => loadMessages().catch((e) => say(e.message, true))));
	$("#refresh").addEventListener("click", refresh);
	$("#more").addEventListener("click", () => loadMessages(true).catch((e) => say(e.message, true)));
	$("#pause").addEventListener("click", async () => { try { await api("pause", { method: "POST" }); $("#state").textContent = "delivery paused"; } catch (e) { say(e.message, true); } });
	$("#resume").addEventListener("click", async () => { try { await api("resume", { method: "POST" }); $("#state").textContent = "delivery running"; } catch (e) { say(e.message, true); } });
	$("#messages").addEventListener("click", (ev) => {
		const t = ev.target;
		if (t.dataset.show) { ev.preventDefault(); show(t.dataset.show); }
		if (t.dataset.action) {
			if ((t.dataset.action === "delete" || t.dataset.action === "bounce") && !confirm(`${t.dataset.action} ${t.dataset.id}?`)) return;
			if (t.dataset.action === "delete") act(t.dataset.id, "DELETE"); else act(`${t.dataset.id}/${t.dataset.action}`);
		}
	});
	for (const b of document.querySelectorAll("[data-bulk]")) {
		b.addEventListener("click", () => {
			const q = filterQuery();
			const a = b.dataset.bulk;
			if ([...q.keys()].length === 0) {
				if (!confirm(`${a} every message in the queue?`)) return;
				q.set("all", "true");
			}
			if (a === "delete") act("?" + q.toString(), "DELETE"); else act(`${a}?` + q.toString());
		});
	}
	$("#holds").addEventListener("click", (ev) => {
		if (ev.target.dataset.unhold) act("holds/" + encodeURIComponent(ev.target.dataset.unhold), "DELETE");
	});
	$("#hold-form").addEventListener("submit", async (ev) => {
		ev.preventDefault();
		const rule = {};
		for (const [k, v] of new FormData(ev.target)) if (v) rule[k] = v;
		try {
			const res = await api("holds", { method: "POST", body: JSON.stringify(rule), headers: { "Content-Type": "application/json" } });
			say(`hold rule ${res.hold.id} added; ${res.touched} message(s) held`);
			ev.target.reset();
			await refresh();
		} catch (e) {
			say(e.message, true);
		}
	});
	if (location.hash.length > 1) show(location.hash.slice(1));
	refresh();
});
