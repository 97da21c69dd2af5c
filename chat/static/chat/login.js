// Demo-account chips on the sign-in page (DEBUG only): fill the form and submit.
for (const chip of document.querySelectorAll(".demo-buttons [data-username]")) {
  chip.addEventListener("click", () => {
    document.getElementById("id_username").value = chip.dataset.username;
    document.getElementById("id_password").value = chip.dataset.password;
    chip.closest("main").querySelector("form").requestSubmit();
  });
}
